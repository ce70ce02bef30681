"""Write the README's line about the test suite from a pytest log, so its figures are measured, not typed.

    .venv/bin/python -m pytest 2>&1 | tee /tmp/suite.log
    .venv/bin/python scripts/suite_figures.py /tmp/suite.log [--setup-seconds S] [--commit SHA]

The line goes between the README's ``suite-figures`` markers; tests/test_readme.py checks that its test
count is the number the suite collects.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- suite-figures:", "<!-- /suite-figures -->"
# pytest's last line: "1427 passed, 14 warnings in 739.12s (0:12:19)"
SUMMARY = re.compile(r"^=*\s*(?P<counts>.*?) in (?P<seconds>[\d.]+)s\b", re.M)


def parse(log: str) -> tuple[int, float]:
    """(tests run, suite seconds) from a pytest log; every outcome counts as a test run."""
    match = list(SUMMARY.finditer(log))[-1]
    tests = sum(int(n) for n, kind in re.findall(r"(\d+) (\w+)", match["counts"]) if kind not in ("warning", "warnings"))
    return tests, float(match["seconds"])


def line(tests: int, seconds: float, commit: str, setup_seconds: float | None, cores: int) -> str:
    setup = f"; set-up from nothing before it took {setup_seconds / 60:.1f} min" if setup_seconds is not None else ""
    return f"At {commit}, the suite ran {tests} tests in {seconds / 60:.1f} min on {cores} cores{setup}."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--setup-seconds", type=float)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    tests, seconds = parse(args.log.read_text(errors="replace"))
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    text = README.read_text()
    head, rest = text.split(START, 1)
    marker_tail, rest = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    new = line(tests, seconds, commit, args.setup_seconds, os.cpu_count() or 1)
    README.write_text(f"{head}{START}{marker_tail}\n{new}\n{END}{tail}")
    print(new)


if __name__ == "__main__":
    main()
