"""The import contracts of pyproject.toml's [tool.importlinter], checked by import-linter itself: layers point
one way (cli -> pipeline -> convert / runtime / hub -> formats), containers and kernels know no format, and no
two sibling modules or packages import each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in r.stdout, r.stdout[-2000:]
