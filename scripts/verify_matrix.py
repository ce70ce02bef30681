"""Convert every readable fixture to every target and run `woqconv verify --against` on each output.

Too slow for CI (one real-loader process per conversion); CI runs a sample (tests/test_verify.py).
    .venv/bin/python scripts/verify_matrix.py [--json results.json] [--no-run]
Prints one line per conversion and a summary; exits 1 if any verify fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import woqconv  # noqa: E402
from woqconv.errors import RefusedConversion  # noqa: E402
from woqconv.runtime.verify import verify  # noqa: E402

READABLE = {"gptq-v1", "gptq-v2", "awq-gemm", "inc-default", "inc-nonoptimum"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--targets", default=",".join(woqconv.TARGETS), help="comma-separated subset of targets")
    ap.add_argument("--from-source", default="", help="start at this fixture (alphabetical), to resume a run")
    ap.add_argument("--only", default="", help="only fixtures whose name starts with this")
    args = ap.parse_args()
    manifest = json.loads((ROOT / "fixtures" / "manifest.json").read_text())
    names = sorted(n for n, e in manifest.items() if e.get("family") in READABLE and n >= args.from_source and n.startswith(args.only))
    targets = [t for t in args.targets.split(",") if t]
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for target in targets:
                out = Path(tmp) / f"{name}--{target}"
                try:
                    woqconv.convert(ROOT / "fixtures" / name, out, to=target, allow_bf16=True)
                except RefusedConversion as e:
                    rows.append({"source": name, "target": target, "result": "refused", "detail": e.problem[:160]})
                    print(f"refused  {name} -> {target}: {e.problem[:120]}", flush=True)
                    continue
                report = verify(out, against=ROOT / "fixtures" / name, run=not args.no_run)
                row = {"source": name, "target": target, "result": "passed" if report.passed else "FAILED", "seconds": report.seconds,
                       "metrics": report.metrics, "failures": [(c.check, c.layer, c.detail) for c in report.failures]}
                rows.append(row)
                m = report.metrics
                print(f"{row['result']:8} {name} -> {target}: {report.seconds:.1f} s, max|dlogit| {m.get('max_abs_logit_diff', float('nan')):.3g}, "
                      f"top1 {m.get('top1_agreement', float('nan')):.2f} {row['failures'][:2] if row['failures'] else ''}", flush=True)
    counts = {k: sum(r["result"] == k for r in rows) for k in ("passed", "FAILED", "refused")}
    print(f"{len(rows)} conversions: {counts['passed']} verified, {counts['FAILED']} failed, {counts['refused']} refused; {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
