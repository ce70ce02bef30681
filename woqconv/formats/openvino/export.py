"""Write a planned ``openvino`` conversion: optimum-intel exports the dense architecture, woqconv puts the codes in.

Steps, all inside the conversion's partial directory (woqconv.io.output makes it appear atomically):

1. ``dense/``: the source's config.json without its quantization_config, and the tensors outside the
   quantized layers (embeddings, norms, lm_head) exactly as stored;
2. optimum-intel exports that architecture to OpenVINO IR in the OpenVINO environment
   (``worker.py`` beside this file, a subprocess: optimum-intel needs transformers < 5.6);
3. every quantized linear's dense weight constant is replaced by its codes, zero points and scales
   (:func:`woqconv.formats.openvino.graph.substitute_weights`), one layer at a time, as the converter
   hands them over;
4. ``openvino_model.xml``/``.bin`` saved uncompressed (an f16 compression pass would round the
   unquantized weights), beside the export's config.json and the source's tokenizer and generation files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import torch

from ...io.checkpoint import CONFIG_NAME, dump_json
from ...errors import WoqconvError
from ...io.safetensors_io import SafetensorsWriter, TensorSpec
from .graph import substitute_weights

REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("worker.py")
ENV_VAR = "WOQCONV_OPENVINO_PYTHON"


def openvino_python() -> str:
    """The Python of the OpenVINO environment: $WOQCONV_OPENVINO_PYTHON, or the repo's .venv-ov."""
    chosen = os.environ.get(ENV_VAR)
    candidate = Path(chosen) if chosen else REPO / ".venv-ov" / "bin" / "python"
    if not candidate.exists():
        raise WoqconvError(
            f"the openvino target needs optimum-intel's environment, not found at {candidate}: run scripts/setup.sh "
            f"(it makes .venv-ov) or set {ENV_VAR} to a Python with optimum-intel 2.2, openvino and transformers < 5.6"
        )
    return str(candidate)


def run_worker(args: list[str], *, timeout: int = 3600, env: dict[str, str] | None = None) -> list[dict]:
    """Run worker.py in the OpenVINO environment (``env`` added to this one's); its JSON rows."""
    proc = subprocess.run(
        [openvino_python(), str(WORKER), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", **(env or {})},
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise WoqconvError(f"the OpenVINO environment's process died (exit {proc.returncode}): {tail[0][:300]}")
    return rows


def _dense_dtype(specs: list[TensorSpec]) -> str:
    # fp16 tensors survive an fp16 export exactly; bf16 or fp32 ones (AutoRound's norms, INC's fp32
    # tensors) need the fp32 graph, which holds every 16-bit value exactly.
    floats = {s.dtype for s in specs if s.dtype in ("F16", "BF16", "F32", "F64")}
    return "float16" if floats <= {"F16"} else "float32"


def write_dense_stub(plan, into: Path) -> None:
    """config.json (no quantization_config) and the unquantized tensors, copied byte for byte."""
    src = plan.source
    ckpt = src.ckpt
    into.mkdir()
    config = dict(ckpt.config)
    config.pop("quantization_config", None)
    (into / CONFIG_NAME).write_text(dump_json(config), encoding="utf-8")
    names = [t for t in ckpt.tensor_names if t not in plan.owned and not t.endswith(".scale_bf16_to_fp8")]
    biases = {}
    for name in plan.prepared:
        layer = plan.prepared[name].layer
        # INC stores an all-zero bias for bias-free linears; the architecture has no place for it.
        if layer.bias is not None and bool(layer.bias.any()):
            biases[f"{name}.bias"] = layer.bias
    specs = [TensorSpec(t, ckpt.info(t).dtype, ckpt.info(t).shape) for t in names]
    specs += [TensorSpec(n, {torch.float16: "F16", torch.bfloat16: "BF16"}.get(b.dtype, "F32"), tuple(b.shape)) for n, b in biases.items()]
    writer = SafetensorsWriter(into / "model.safetensors", specs, {"format": "pt"})
    try:
        for t in names:
            writer.copy_from(t, ckpt.shards[ckpt.locations[t]])
        for n, b in biases.items():
            writer.write(n, b if b.dtype in (torch.float16, torch.bfloat16) else b.to(torch.float32))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    (into / "woqconv-dense.json").write_text(json.dumps({"dtype": _dense_dtype(specs)}), encoding="utf-8")


def write_openvino(plan, into: Path, layer_to_write: Callable, progress: Callable[[int], None] | None = None) -> int:
    """Write the planned conversion into the empty directory ``into``; return bytes written.
    ``layer_to_write(plan, name)`` is the converter's: the layer with its codes (requantized where the plan
    says), exactly as the other targets' writers get it."""
    import openvino as ov

    tick = progress or (lambda n: None)
    src = plan.source
    work = into / ".woqconv-work"
    work.mkdir()
    try:
        write_dense_stub(plan, work / "dense")
        row = run_worker(["export", str(work / "dense"), str(work / "export")])[0]
        if "error" in row:
            raise WoqconvError(f"optimum-intel could not export the architecture: {row['error']}", file=src.root)
        model = ov.Core().read_model(str(work / "export" / "openvino_model.xml"))

        def layers():
            for name in plan.prepared:
                layer = layer_to_write(plan, name)
                yield layer
                tick(sum(src.ckpt.info(t).nbytes for t in src.family.owned_tensors(src.ckpt, name) if t in plan.owned))

        try:
            substitute_weights(model, layers())
        except ValueError as e:
            raise WoqconvError(f"cannot place the quantized weights in optimum-intel's export: {e}", file=src.root) from None
        ov.save_model(model, str(into / "openvino_model.xml"), compress_to_fp16=False)
        shutil.copyfile(work / "export" / CONFIG_NAME, into / CONFIG_NAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, data in plan.extra_json.items():
        (into / name).write_text(dump_json(data), encoding="utf-8")
    for rel in plan.copied_files:
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.ckpt.path_of(rel), dst)
        tick(dst.stat().st_size)
    return sum(p.stat().st_size for p in into.rglob("*") if p.is_file())
