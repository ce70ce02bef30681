"""Determinism (issue 6, item 3): the same input converted twice gives byte-identical files, for every
target: no timestamps, no random or hash-seed-dependent ordering in safetensors headers, JSON or INC's
torch.save container. The second conversion runs in another process with another PYTHONHASHSEED, at
another time, into a directory of another name. The input is left exactly as it was (bytes and mtimes).
"""

from __future__ import annotations

import pytest

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import base_for, fixture_path
from corpus import shard, snapshot

import woqconv

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

# Every target at least once; sharded sources (HF index, INC's blockwise shards) included.
CONVERSIONS = [
    ("ar-g32-asym-auto_gptq", "gptq-v2"),
    ("ar-g32-asym-auto_gptq", "awq"),
    ("ar-g32-asym-auto_gptq", "inc"),
    ("ar-g32-asym-auto_gptq", "inc-hf"),
    ("ar-g32-asym-auto_gptq", "hpu"),
    ("ar-g32-sym-auto_awq", "gptq"),
    ("inc-default-sharded-gptq-actorder-g32-asym", "gptq-v2"),
    ("sharded:ar-g32-sym-auto_gptq", "awq"),
]


def files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_converting_twice_gives_identical_bytes(tmp_path):
    sources = {}
    for name, _ in CONVERSIONS:
        if name.startswith("sharded:"):
            sources[name] = tmp_path / "sharded-src"
            if not sources[name].exists():
                shutil.copytree(fixture_path(name.split(":", 1)[1]), sources[name])
                shard(sources[name])
        else:
            sources[name] = fixture_path(name)
    before = snapshot(*set(sources.values()))
    bases = {s: str(base_for(p)) if base_for(p) else None for s, p in sources.items()}  # INC's default format records no architecture
    jobs = [(str(sources[s]), str(tmp_path / f"b{i}-second-run"), t, bases[s]) for i, (s, t) in enumerate(CONVERSIONS)]
    for i, (src, _, target, base) in enumerate(jobs):
        woqconv.convert(src, tmp_path / f"a{i}", to=target, allow_bf16=True, base_model=base)
    script = "import json, sys, woqconv\nfor s, o, t, b in json.loads(sys.argv[1]):\n    woqconv.convert(s, o, to=t, allow_bf16=True, base_model=b)\n"
    r = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert r.returncode == 0, r.stderr[-3000:]
    for i, (src, target) in enumerate(CONVERSIONS):
        first, second = files(tmp_path / f"a{i}"), files(tmp_path / f"b{i}-second-run")
        assert first == second, (src, target, {k for k in first.keys() | second.keys() if first.get(k) != second.get(k)})
        assert first, (src, target)
    assert snapshot(*set(sources.values())) == before, "the input changed"
