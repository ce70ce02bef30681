"""``verify`` of a dense output (``--to dense``): each quantized layer of the source is there as a plain
``weight``, equal to the source's ``dequantize()`` bit for bit in float32, or to exactly that rounded once to
the file's 16-bit dtype; then the output runs in plain transformers beside the source in its own loader.

The comparison decodes nothing of the output (a dense weight is its own value) and dequantizes the source with
the IR, the definition of "the same weights".
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..compute import compute_threads, map_in_order, release_freed_memory
from ..formats.dense import rounding_loss
from ..io.checkpoint import Checkpoint
from ..io.safetensors_io import TORCH_NAMES
from ..source import QuantizedCheckpoint
from .report import Check, VerifyReport


def _compare(out: Checkpoint, src: QuantizedCheckpoint, name: str) -> Check:
    weight = f"{name}.weight"
    if not out.has(weight):
        return Check("weights", False, f"no {weight} in the output", name)
    layer = src.read_layer(name)
    got = out.read(weight)
    if tuple(got.shape) != (layer.out_features, layer.in_features):
        return Check("weights", False, f"{weight} has shape {list(got.shape)}, the source's layer is {layer.out_features}x{layer.in_features}", name)
    exact = layer.dequantize()
    expected = exact if got.dtype == torch.float32 else exact.to(got.dtype)
    problems = []
    if not torch.equal(got.view(torch.int16 if got.element_size() == 2 else torch.int32),
                       expected.view(torch.int16 if expected.element_size() == 2 else torch.int32)):
        differ = int((got.to(torch.float32) != expected.to(torch.float32)).sum())
        problems.append(f"{differ} weights differ from the source's dequantization" + ("" if got.dtype == torch.float32 else f" rounded to {got.dtype}"))
    if layer.bias is not None:
        bias = f"{name}.bias"
        if not out.has(bias):
            problems.append(f"no {bias} (the source's layer has one)")
        elif not torch.equal(out.read(bias).to(torch.float32), layer.bias.to(torch.float32)):
            problems.append("bias differs from the source's")
    if problems:
        return Check("weights", False, "; ".join(problems), name)
    if got.dtype == torch.float32:
        return Check("weights", True, "bit-identical (float32, the source's dequantization)", name)
    loss = rounding_loss(exact, got)
    if loss is None:
        return Check("weights", True, f"bit-identical (every weight exact in {str(got.dtype).removeprefix('torch.')})", name)
    return Check("weights", True, f"the source's dequantization rounded to {loss['dtype']}: {loss['values_changed']} of {loss['values_total']} "
                 f"changed, relative Frobenius error {loss['rel_fro']:.3g}, max |err| {loss['max_abs']:.3g}", name,
                 accepted={"kind": f"weights rounded to {loss['dtype']}", "changed": loss["values_changed"], "total": loss["values_total"],
                           "max_rel_change": loss["max_rel_change"]})


def weights_dtype(path: Path, layer: str) -> str:
    """The dtype the dense output wrote the quantized layer ``layer`` in (the carried tensors may keep another)."""
    with Checkpoint.open(path) as ckpt:
        name = f"{layer}.weight"
        dtype = ckpt.info(name).dtype if ckpt.has(name) else "F32"
    return TORCH_NAMES.get(dtype, dtype)


def dense_weights_checks(path: Path, src: QuantizedCheckpoint, report: VerifyReport, workers: int) -> None:
    """One check per source layer: the output's dense weight against the source's dequantization."""
    with Checkpoint.open(path) as out:
        names = [layer.name for layer in src.layers]

        def compare(name: str) -> Check:
            check = _compare(out, src, name)
            release_freed_memory()
            return check

        with compute_threads(workers):
            report.checks.extend(map_in_order(compare, names, workers))
        leftover = [n for n in out.tensor_names if n.endswith((".qweight", ".weight_packed", ".qzeros", ".scales"))]
        if leftover:
            report.checks.append(Check("structure", False, f"{len(leftover)} quantized tensors left in a dense output, e.g. {leftover[0]}"))
    report.metrics["layers_compared"] = len(names)
