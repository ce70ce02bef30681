"""AWQ -> compressed-tensors: woqconv beside compressed-tensors' own converter, at real model sizes.

compressed-tensors ships one converter into its format, ``AutoAWQConverter`` (entrypoints/convert), run by
``convert_checkpoint``. This script synthesizes a GPTQ checkpoint of a real shape (benchmarks/synth.py),
makes it AWQ with woqconv (an AutoAWQ-layout file: what that converter reads), then times, as the median of
``--runs`` rounds with the steps interleaved, ``cp -r`` (the floor), ``woqconv convert --to
compressed-tensors`` and ``convert_checkpoint(..., AutoAWQConverter)`` on the CPU, each a child process with
its peak RSS from ``wait4``. The two outputs' tensors are compared once (they must be equal).

    .venv/bin/python benchmarks/ct_convert.py [--cases 1b,7b] [--runs 3] [--scratch /tmp/woqconv-ct-bench]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Measurement, measure_rounds  # noqa: E402

THEIRS = ("import sys\n"
          "from compressed_tensors.entrypoints.convert import convert_checkpoint\n"
          "from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter\n"
          "convert_checkpoint(sys.argv[1], sys.argv[2], converter=AutoAWQConverter.from_pretrained(sys.argv[1]), device='cpu')\n")


SAME = ("import sys, torch\n"
        "from pathlib import Path\n"
        "from safetensors import safe_open\n"
        "def tensors(d):\n"
        "    return {k: f for f in sorted(Path(d).glob('*.safetensors')) for k in safe_open(f, 'pt').keys()}\n"
        "a, b = tensors(sys.argv[1]), tensors(sys.argv[2])\n"
        "ok = sorted(a) == sorted(b)\n"
        "for k in sorted(a) if ok else []:\n"
        "    x, y = safe_open(a[k], 'pt').get_tensor(k), safe_open(b[k], 'pt').get_tensor(k)\n"
        "    ok = ok and x.dtype == y.dtype and torch.equal(x, y)\n"
        "sys.exit(0 if ok else 1)\n")


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of one output equals the other's (by name, dtype and bytes), compared in a child process: a
    child forked from a big process would count its pages in its own peak RSS."""
    return subprocess.run([sys.executable, "-c", SAME, str(a), str(b)]).returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="1b,7b", help="synth.py shapes, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/woqconv-ct-bench"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    py = sys.executable
    woqconv = [py, "-m", "woqconv", "convert"]
    results = []
    args.scratch.mkdir(parents=True, exist_ok=True)
    # woqconv's bytecode, as a pip install compiles it: an editable install writes it on first use, unless
    # PYTHONDONTWRITEBYTECODE is set (as on the development VM), which recompiled 63 modules in every run (0.08 s).
    subprocess.run([py, "-m", "compileall", "-q", str(HERE.parent / "woqconv")], check=True, stdout=subprocess.DEVNULL)
    try:
        for case in args.cases.split(","):
            gptq, src = args.scratch / f"gptq-{case}", args.scratch / f"awq-{case}"
            for d in (gptq, src):
                shutil.rmtree(d, ignore_errors=True)
            subprocess.run([py, str(HERE / "synth.py"), str(gptq), "--shape", case], check=True)
            subprocess.run([*woqconv, str(gptq), "-o", str(src), "--to", "awq", "--format", "json"], check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(gptq)
            size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
            steps = [
                (Measurement(case, "cp -r", size), lambda out: ["cp", "-r", str(src), str(out)]),
                (Measurement(case, "woqconv convert", size), lambda out: [*woqconv, str(src), "-o", str(out), "--to", "compressed-tensors",
                                                                    "--format", "json"]),
                (Measurement(case, "compressed-tensors convert_checkpoint", size), lambda out: [py, "-c", THEIRS, str(src), str(out)]),
            ]
            measure_rounds(steps, src, args.scratch, args.runs, "warm", swapped={1})
            ours, theirs = args.scratch / "ours", args.scratch / "theirs"
            for d, (_, cmd) in ((ours, steps[1]), (theirs, steps[2])):
                shutil.rmtree(d, ignore_errors=True)
                subprocess.run(cmd(d), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            equal = same_tensors(ours, theirs)
            for d in (ours, theirs, src):
                if not args.keep:
                    shutil.rmtree(d, ignore_errors=True)
            results.append((case, [m for m, _ in steps], equal))
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    print("\n| case | step | median s | median peak RSS MB | runs |\n|---|---|---|---|---|")
    for case, ms, _ in results:
        for m in ms:
            print(f"| {case} | {m.what} | {statistics.median(r.seconds for r in m.runs):.2f} | "
                  f"{statistics.median(r.peak_rss_mb for r in m.runs):.0f} | {len(m.runs)} |")
    print()
    for case, ms, equal in results:
        ours, theirs = ms[1], ms[2]
        speed = statistics.median(b.seconds / a.seconds for a, b in zip(ours.runs, theirs.runs))
        rss = statistics.median(r.peak_rss_mb for r in ours.runs) / statistics.median(r.peak_rss_mb for r in theirs.runs)
        print(f"{case}: woqconv is {speed:.1f}x faster (median of per-round ratios), peak RSS {rss:.2f}x of the converter's; "
              f"outputs' tensors {'equal' if equal else 'DIFFER'}")
    return 0 if all(equal for *_, equal in results) else 1


if __name__ == "__main__":
    sys.exit(main())
