"""Read an ``openvino`` output back with OpenVINO itself, and verify it.

* :func:`decompressed_weights`: for every MatMul whose weight is a compressed (u4/u8/i4/i8) constant,
  the codes, zero points and the weight OpenVINO's runtime computes from them, by compiling the
  decompression sub-graph alone on the CPU (so the numbers are OpenVINO's, not woqconv's arithmetic);
* :func:`fused_layers`: how many of those the CPU plugin fused into a FullyConnected with compressed
  weights (the fast path; an unfused sub-graph would run, but dense);
* :func:`verify_openvino`: ``woqconv verify`` for an openvino output: structure (fusion), weights
  against the source's IR dequantization bit for bit, and OVModelForCausalLM's logits against the source
  run by its own loader.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMPRESSED = ("u4", "u8", "i4", "i8")
XML = "openvino_model.xml"


@dataclass
class Decompressed:
    """One linear as OpenVINO computes it, laid out ``[out, in]`` whichever way the MatMul holds it."""

    codes: torch.Tensor  # the integer codes as OpenVINO converts them, [out, in]
    zeros: torch.Tensor | None  # [out, G], None without a zero point
    weight: torch.Tensor  # the decompressed weight [out, in], in the dtype OpenVINO computes it in
    codes_type: str  # element type of the codes constant (u4, u8, ...)


def _module_of(matmul) -> str:
    # optimum-intel names a linear's MatMul "__module.<path>/ov_ext::linear/MatMul".
    name = matmul.get_friendly_name().split("/", 1)[0]
    return name[len("__module."):] if name.startswith("__module.") else name


def _weight_source(matmul):
    """The node producing the MatMul's weight, past any Convert."""
    out = matmul.input_value(1)
    while out.get_node().get_type_name() == "Convert":
        out = out.get_node().input_value(0)
    return out


def _find(output, kind: str, depth: int = 6):
    """The first node of type ``kind`` upstream of ``output`` (depth-first, input 0 first)."""
    node = output.get_node()
    if node.get_type_name() == kind:
        return node
    if depth == 0:
        return None
    for value in node.input_values():
        hit = _find(value, kind, depth - 1)
        if hit is not None:
            return hit
    return None


def _compressed_constant(node) -> bool:
    return node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in COMPRESSED


def decompressed_weights(path: str | Path) -> dict[str, Decompressed]:
    """Every compressed linear weight of ``path/openvino_model.xml``, computed by OpenVINO on CPU."""
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    model = core.read_model(str(Path(path) / XML))
    found: dict[str, Decompressed] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        weight = _weight_source(node)
        sub = _find(weight, "Subtract")
        convert = sub.input_value(0).get_node() if sub is not None else _find(weight, "Convert")
        if convert is None or convert.get_type_name() != "Convert" or not _compressed_constant(convert.input_value(0).get_node()):
            continue  # a dense weight (lm_head, embeddings)
        codes, const = convert.output(0), convert.input_value(0).get_node()
        outputs = [codes, weight] + ([sub.input_value(1)] if sub is not None else [])
        # The weight sub-graph alone, compiled and run by the CPU plugin in f32 (what the graph says).
        probe = ov.Model([ops.result(o) for o in outputs], [], "decompression")
        values = core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({})
        codes_v, weight_v, *zeros_v = (torch.from_numpy(np.array(values[i])) for i in range(len(outputs)))
        # optimum-intel's linears multiply by W^T (transpose_b); OpenVINO's GPTQ patch keeps GPTQ's [in, out].
        transposed = not node.get_attributes().get("transpose_b", False)
        out_f = weight_v.shape[1] if transposed else weight_v.shape[0]

        def oriented(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, out_f).T if transposed else t.reshape(out_f, -1)

        found[_module_of(node)] = Decompressed(
            oriented(codes_v), oriented(zeros_v[0]) if zeros_v else None, oriented(weight_v), const.get_output_element_type(0).get_type_name()
        )
    return found


def fused_layers(path: str | Path, precision: str = "f32") -> tuple[int, int]:
    """(FullyConnected nodes whose weight input is compressed, all FullyConnected nodes) after the CPU
    plugin compiled the model: the decompression sub-graphs it fused into its kernels."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(Path(path) / XML)), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    fused = total = 0
    for op in compiled.get_runtime_model().get_ops():
        if op.get_rt_info()["layerType"].astype(str) != "FullyConnected":
            continue
        total += 1
        if op.get_input_size() > 1 and op.input(1).get_element_type().get_type_name() in COMPRESSED:
            fused += 1
    return fused, total


def verify_openvino(path: Path, against: Path | None, run: bool, t, report, base=None, *, source_loader) -> None:
    """Fill ``report`` (a VerifyReport) for an openvino output; ``base`` (a BaseModel) is the source's
    original model when the source records no architecture (INC's default format); ``source_loader(src)``
    is verify's choice of the loader that runs the source."""
    from ..source import open_checkpoint
    from .report import Check

    start = time.perf_counter()
    report.format = "openvino"
    weights = decompressed_weights(path)
    fused, total = fused_layers(path)
    report.checks.append(Check("structure", bool(weights), f"{len(weights)} compressed linears read back by OpenVINO"))
    report.checks.append(Check("fused", fused == len(weights), f"the CPU plugin fused {fused} of {len(weights)} decompression sub-graphs into FullyConnected ({total} in all)"))
    if against is not None:
        with open_checkpoint(against) as src:
            names = {layer.name for layer in src.layers}
            for name in sorted(names - set(weights)):
                report.checks.append(Check("weights", False, "layer of the source missing from the output", name))
            for layer in src.iter_layers():
                got = weights.get(layer.name)
                if got is None:
                    continue
                want = layer.dequantize()
                same = got.weight.dtype == torch.float32 and torch.equal(got.weight.view(torch.int32), want.view(torch.int32))
                detail = "bit-identical (fp32, as OpenVINO computes it)" if same else f"max |diff| {float((got.weight.float() - want).abs().max()):.3g}"
                report.checks.append(Check("weights", same, detail, layer.name))
            report.metrics["layers_compared"] = len(names & set(weights))
    if run:
        _run_check(path, against, t, report, base, source_loader)
    report.seconds = round(time.perf_counter() - start, 3)


def _run_check(path: Path, against: Path | None, t, report, base, source_loader) -> None:
    from .report import Check
    from .runs import OPENVINO, run_in_loaders

    from ..source import open_checkpoint

    report.loader = "openvino (OVModelForCausalLM, CPU, f32, no dynamic quantization)"
    report.device = "cpu"
    with tempfile.TemporaryDirectory(prefix="woqconv-verify-") as tmp:
        if against is None:
            report.checks.append(Check("run", True, "no --against: the run needs the source as its reference; not run"))
            return
        with open_checkpoint(against) as src:
            ref_loader = source_loader(src)
        report.reference = f"{ref_loader}:{Path(against).resolve()}"
        got, ref = run_in_loaders(Path(tmp), "cpu", [(OPENVINO, path), (ref_loader, Path(against))], base.root if base else None)
        for row, what in ((got, "output"), (ref, "reference")):
            if "error" in row:
                report.checks.append(Check("run", False, f"{what} did not run: {row['error']}"))
                return
        a, b = torch.load(got["file"]), torch.load(ref["file"])
    max_abs = float((a - b).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    ppl_rel = abs(got["ppl"] - ref["ppl"]) / ref["ppl"]
    report.metrics.update({"max_abs_logit_diff": max_abs, "cosine": cos, "ppl": got["ppl"], "ppl_reference": ref["ppl"],
                           "loader_module": "OVModelForCausalLM", "reference_module": ref["module"], "precision": "fp32"})
    report.checks.append(Check("run: max |logit diff|", max_abs <= t.max_abs_logit, f"{max_abs:.3g} (limit {t.max_abs_logit:g})"))
    report.checks.append(Check("run: cosine", cos >= t.min_cosine, f"{cos:.6f} (limit {t.min_cosine:g})"))
    report.checks.append(Check("run: perplexity", ppl_rel <= t.max_ppl_rel, f"{got['ppl']:.4g} vs {ref['ppl']:.4g} (relative {ppl_rel:.2g}, limit {t.max_ppl_rel:g})"))
