"""The README's figures about the suite are generated (scripts/suite_figures.py) and checked here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import suite_figures  # noqa: E402


def test_the_figures_are_parsed_from_pytest_s_own_summary():
    log = "....\n===== 1427 passed, 2 skipped, 14 warnings in 739.12s (0:12:19) =====\n"
    assert suite_figures.parse(log) == (1429, 739.12)
    assert suite_figures.line(1429, 739.12, "abc1234", 120.0, 2) == (
        "At abc1234, the suite ran 1429 tests in 12.3 min on 2 cores; set-up from nothing before it took 2.0 min.")


def test_the_readme_counts_the_tests_the_suite_has(request):
    text = (ROOT / "README.md").read_text()
    block = text.split(suite_figures.START, 1)[1].split(suite_figures.END, 1)[0]
    stated = int(re.search(r"the suite (?:ran|has) (\d+) tests", block, re.I)[1])
    config = request.config
    if config.option.markexpr or config.option.keyword or getattr(config.option, "lf", False) or any("::" in a or a.endswith(".py") for a in config.args):
        pytest.skip("a partial run cannot count the whole suite")
    assert stated == len(request.session.items), "run scripts/suite_figures.py on a full run's log"
