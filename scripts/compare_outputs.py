"""Convert every fixture to every target with two woqconv source trees and compare the outputs byte for byte.

A refactoring keeps behaviour when, for every fixture x target, both trees refuse with the same message or
both write the same files with the same bytes. Run from the repository's .venv:

    git worktree add /tmp/woqconv-old <old commit>          # or: git clone . /tmp/woqconv-old && git -C ... checkout
    .venv/bin/python scripts/compare_outputs.py /tmp/woqconv-old [--new .] [--only 'ar-*'] [--to gptq --to awq]

Each tree converts in its own Python process (the tree first on sys.path), into a scratch directory; the C
extension is copied from this tree when the old one has not built it (_relayout.c rarely changes).
Prints one line per difference and a summary; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"

# Run inside each tree's process: convert, and record per (fixture, target) the files' sha256 or the refusal.
_CONVERT = r"""
import hashlib, json, sys
from pathlib import Path
tree, out_root, jobs = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, tree)
import woqconv
results = {}
for fixture, target, base in jobs:
    out = out_root / Path(fixture).name / target
    out.parent.mkdir(parents=True, exist_ok=True)
    key = f"{Path(fixture).name} -> {target}"
    try:
        woqconv.convert(fixture, out, to=target, base_model=base)
    except woqconv.WoqconvError as e:
        results[key] = {"refused": str(e).replace(str(out), "OUT")}
        continue
    results[key] = {"files": {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in sorted(out.rglob("*")) if p.is_file()}}
    assert woqconv.__file__.startswith(tree), woqconv.__file__
print(json.dumps(results))
"""


def _jobs(only: list[str], targets: list[str]) -> list[tuple[str, str, str | None]]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    names = [n for n in sorted(manifest) if not only or any(fnmatch.fnmatch(n, p) for p in only)]
    jobs = []
    for name in names:
        if name.startswith("base-"):
            continue
        path = FIXTURES / name
        base = None if (path / "config.json").exists() else str(FIXTURES / "base-fp16")
        jobs += [(str(path), t, base) for t in targets]
    return jobs


def _run(tree: Path, out_root: Path, jobs) -> dict[str, dict]:
    # The C kernel's build, beside the tree's own _relayout.c (woqconv/ before issue 23, woqconv/kernels/ after).
    so = sorted((REPO / "woqconv").rglob("_relayout*.so"))
    for source in tree.glob("woqconv/**/_relayout.c"):
        if so and not list(source.parent.glob("_relayout*.so")):
            shutil.copy2(so[0], source.parent / so[0].name)
    # Both trees use this checkout's OpenVINO environment (a worktree has no .venv-ov of its own).
    env = {**os.environ, "WOQCONV_OPENVINO_PYTHON": os.environ.get("WOQCONV_OPENVINO_PYTHON", str(REPO / ".venv-ov" / "bin" / "python"))}
    proc = subprocess.run([sys.executable, "-c", _CONVERT, str(tree.resolve()), str(out_root), json.dumps(jobs)],
                          capture_output=True, text=True, cwd=out_root, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        sys.exit(f"{tree}: conversions failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="the other woqconv source tree (a checkout of the commit to compare with)")
    ap.add_argument("--new", type=Path, default=REPO)
    ap.add_argument("--only", action="append", default=[], help="fixture name pattern (repeatable)")
    ap.add_argument("--to", action="append", default=[], help="target (repeatable; default: every target of the new tree)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.new.resolve()))
    from woqconv.formats import TARGETS

    jobs = _jobs(args.only, args.to or list(TARGETS))
    with tempfile.TemporaryDirectory(prefix="woqconv-compare-") as tmp:
        for side in ("old", "new"):
            (Path(tmp) / side).mkdir()
        old = _run(args.old, Path(tmp) / "old", jobs)
        new = _run(args.new, Path(tmp) / "new", jobs)
    differ = 0
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            differ += 1
            files_a, files_b = (a or {}).get("files", {}), (b or {}).get("files", {})
            changed = sorted(f for f in set(files_a) | set(files_b) if files_a.get(f) != files_b.get(f))
            what = f"files {', '.join(changed)}" if changed else f"old {json.dumps(a)[:300]} | new {json.dumps(b)[:300]}"
            print(f"DIFFERS {key}: {what}")
    written = sum(1 for v in new.values() if "files" in v)
    files = sum(len(v["files"]) for v in new.values() if "files" in v)
    digest = hashlib.sha256(json.dumps(new, sort_keys=True).encode()).hexdigest()[:16]
    print(f"{len(jobs)} fixture x target pairs: {written} written ({files} files), {len(jobs) - written} refused; "
          f"{differ} differ between {args.old} and {args.new} (new results digest {digest})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
