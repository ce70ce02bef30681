"""The long fuzzing campaign (issue 6): tests/test_fuzz.py with every test's case count multiplied.

    .venv/bin/python scripts/fuzz_long.py [--scale 30]     # 30 x 500 = 15,000 cases, ~10-20 min on 2 cores

CI runs the same tests at scale 1 (500 derandomized cases). Here each run draws fresh random cases.
Prints hypothesis' per-test statistics and one closing line with the total number of cases run and
failures found; exits non-zero if any test failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=30, help="multiply every fuzz test's CI case count by this")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k headers")
    args = ap.parse_args()
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics", *args.pytest_args],
        cwd=ROOT, env={**os.environ, "WOQCONV_FUZZ_SCALE": str(args.scale)}, capture_output=True, text=True,
    )
    print(proc.stdout + proc.stderr)
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+) passing, (\d+) failing", proc.stdout)]
    passing, failing = sum(c[0] for c in counts), sum(c[1] for c in counts)
    print(f"fuzz_long: scale {args.scale}: {passing + failing} cases ({passing} passing, {failing} failing) "
          f"in {len(counts)} tests, {time.time() - start:.0f} s, pytest exit {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
