"""Run checkpoints in their real loaders and collect their logits rows, for verify.

Every loader but one runs in woqconv's worker (``python -m woqconv.runtime.worker``, a subprocess of this
environment); ``openvino`` runs OVModelForCausalLM in OpenVINO's own environment (f32, no dynamic
quantization: what the graph computes). Both read the same prompt and perplexity stream (worker.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .worker import BASE_ENV

OPENVINO = "openvino"


def run_logits(result_dir: Path, profiles: list[str], paths: list[Path]) -> list[dict]:
    """OVModelForCausalLM rows (``file``, ``ppl``, ``device``) per (profile, path), from the OpenVINO environment."""
    from ..formats.openvino.export import run_worker
    from ..formats.openvino.worker import SHARED_INPUTS_ENV

    return run_worker(["run", str(result_dir), ",".join(profiles), *(str(p.resolve()) for p in paths)],
                      env={SHARED_INPUTS_ENV: str(Path(__file__).with_name("worker.py"))})


def run_in_loaders(result_dir: Path, device: str, specs: list[tuple[str, Path]], base_root: Path | None = None) -> list[dict]:
    """One row per (loader, path) of ``specs``, in order: {"loader", "file", "ppl", "module", "device"} or
    {"loader", "error"}. ``base_root``: the base model's directory, for checkpoints that record no architecture."""
    rows: dict[int, dict] = {}
    in_worker = [(i, loader, Path(path)) for i, (loader, path) in enumerate(specs) if loader != OPENVINO]
    if in_worker:
        proc = subprocess.run(
            [sys.executable, "-m", "woqconv.runtime.worker", str(result_dir), device,
             *(f"{loader}:{path.resolve()}" for _, loader, path in in_worker)],
            capture_output=True, text=True, timeout=3600, cwd=result_dir,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **({BASE_ENV: str(Path(base_root).resolve())} if base_root else {})},
        )
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        tail = (proc.stderr.strip().splitlines()[-1:] or ["no output"])[0][:300]
        for k, (i, loader, _) in enumerate(in_worker):
            rows[i] = got[k] if k < len(got) else {"error": f"loader process died (exit {proc.returncode}): {tail}"}
    in_openvino = [(i, Path(path)) for i, (loader, path) in enumerate(specs) if loader == OPENVINO]
    if in_openvino:
        got = run_logits(result_dir, ["f32"], [path for _, path in in_openvino])
        for k, (i, _) in enumerate(in_openvino):
            rows[i] = got[k] if k < len(got) else {"error": "OpenVINO's environment gave no row"}
    return [{**rows[i], "loader": rows[i].get("loader") or loader} for i, (loader, _) in enumerate(specs)]
