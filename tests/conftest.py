"""Shared fixtures: the real-library checkpoints in fixtures/ and their manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

# Families woqconv reads.
READABLE_FAMILIES = {"gptq-v1", "gptq-v2", "awq-gemm", "inc-default", "inc-nonoptimum", "compressed-tensors"}


def fixture_names(**match) -> list[str]:
    """Fixture directories whose manifest entry has every key=value given (value may be a tuple of choices)."""
    names = []
    for name, entry in sorted(MANIFEST.items()):
        if entry.get("family") not in READABLE_FAMILIES:
            continue
        if entry.get("layer_config") and "layer_config" not in match:
            continue  # mixed precision has its own expectations (test_mixed_precision.py)
        ok = True
        for key, want in match.items():
            have = entry.get(key)
            if isinstance(want, tuple):
                ok &= have in want
            else:
                ok &= have == want
        if ok:
            names.append(name)
    return names


@pytest.fixture(scope="session")
def manifest() -> dict:
    return MANIFEST


def fixture_path(name: str) -> Path:
    return FIXTURES / name


BASE = FIXTURES / "base-fp16"  # the original model of every quantized fixture


def base_for(path: Path) -> Path | None:
    """The base model to pass for a checkpoint that records no architecture (INC's default format, as INC
    writes it), as a user passes --base-model; None for one that has its config.json."""
    return None if (Path(path) / "config.json").exists() else BASE


def pytest_collection_modifyitems(items):
    """A test that runs real loaders is slow too: the quick tier (``-m "not slow"``) leaves it out."""
    for item in items:
        if item.get_closest_marker("loaders") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
