"""Shared plumbing for tests that load checkpoints with real loaders in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BASE, MANIFEST, ROOT

TOL = 1e-4


def run_loads(specs: list[tuple[str, Path]], out: Path, script: str = "load_logits.py", timeout: int = 1500) -> dict[str, dict]:
    """Run ``tests/<script> OUT LOADER:PATH ...`` and return its JSON rows by path (INC's default-format
    fixtures record no architecture: the loaders build their original model from base-fp16)."""
    args = [f"{loader}:{path}" for loader, path in specs]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / script), str(out), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WOQCONV_BASE_MODEL_DIR": str(BASE)})
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(specs), f"loader subprocess died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return {row["path"]: row for row in rows}


def twin_auto_gptq(name: str) -> str:
    """AutoRound's own export of the same quantization run that gptqmodel reads, with exactly the run's
    integers: auto_gptq, or auto_awq where the v1 export clamped zero points (run_exact false)."""
    run = MANIFEST[name]["run"]
    for export in ("auto_gptq", "auto_awq"):
        for n, e in sorted(MANIFEST.items()):
            if e.get("run") == run and e.get("export") == export and e.get("run_exact", True) and not n.startswith("mislabelled"):
                return n
    raise LookupError(f"no exact gptqmodel-readable export in run {run}")


def read_by_auto_round_kernel(module: str) -> bool:
    return module.startswith("QuantLinear")


def source_loader(name: str) -> str:
    """The real loader of a fixture: INC for INC's formats, transformers' dispatch for the rest."""
    family = MANIFEST[name]["family"]
    if family == "inc-default":
        return "inc-default"
    return "inc" if name.startswith("inc-hf") else "transformers"
