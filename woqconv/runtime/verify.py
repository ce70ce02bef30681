"""``woqconv verify``: is a converted checkpoint whole, the same weights as its source, and does it run?

Three kinds of check, each reported per layer where it has a layer:

1. structure: every quantized layer readable and complete (the architecture's linears all present),
   the config accepted by the target loader's own config class, and the zero-point label agreeing
   with the data (loaders follow the label, so OUT is read the way its loader reads it);
2. weights (with ``against``): OUT's IR against SRC's: codes, zero points, scales (and their dtype)
   bit for bit per channel, or, for the bf16 scales of an ``hpu`` cache, within the error thresholds;
3. run: OUT loaded by its real loader on the chosen device, fp32 logits and perplexity against a
   reference (SRC by its own loader, or woqconv's dequantization into the dense architecture).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable
from pathlib import Path

import torch

from .. import base_model as bases
from ..architecture import meta_model
from ..io.checkpoint import CONFIG_NAME, HPU_CACHES
from ..compute import compute_threads, default_workers, map_in_order, release_freed_memory
from ..errors import BadArgument, WoqconvError, check_workers
from ..extras import installed, require
from ..formats import TARGETS, Detection
from ..formats.dense import is_dense_checkpoint
from ..ir import CodebookLinear, GIdxKind, QuantLinear
from ..requant import weight_error
from ..source import QuantizedCheckpoint, open_checkpoint
from .devices import select_device
from .report import REQUANTIZED, Check, Thresholds, VerifyReport, parse_thresholds  # noqa: F401  (the API's names)
from .runs import VLLM, run_in_loaders, vllm_missing, vllm_python


# INC's Gaudi routes: bf16 scales, judged by the bf16 thresholds, on the device the loader reports.
GAUDI_LOADERS = ("inc-hpu", "inc-hpu-default")
# Loaders that compute in bf16 (vLLM's CPU W4A16 kernel takes no fp32 activations): the bf16 thresholds.
BF16_LOADERS = (*GAUDI_LOADERS, VLLM)
# Every loader an output can be run in (``verify(loader=...)``, ``--loader``).
LOADERS = ("transformers", "gptqmodel", "inc", "inc-default", "inc-hpu", "inc-hpu-default", VLLM, "dense")


def _as_logprobs(got: dict, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM gives log-probabilities of its most likely tokens per position (``ids``, ``logprobs``), not logits:
    compare those with the reference's log-softmax at the same tokens, position by position."""
    ids = got["ids"].clamp_min(0)
    ref_logprobs = torch.log_softmax(ref[0].float(), dim=-1).gather(-1, ids)
    return got["logprobs"].float().where(got["ids"] >= 0, ref_logprobs), ref_logprobs


def _loader_for(ckpt: QuantizedCheckpoint) -> str:
    fmt = ckpt.format
    for target in TARGETS.values():
        # An output with a Gaudi cache is meant for INC's Gaudi path, whoever produced its source.
        cache = target.companion.file if target.companion else target.default_hpu_cache
        if cache and (ckpt.root / cache).exists():
            return target.loader
    own = fmt.detection.output_loader(ckpt) if fmt.detection else None
    return own or (TARGETS[fmt.name].loader if fmt.name in TARGETS else "transformers")


def _open_as_loader_reads(path: Path, report: VerifyReport) -> QuantizedCheckpoint:
    """Open OUT reading zero points the way its loaders do: by the label, not by woqconv's data check.

    An OUT that cannot be read at all is bad input (exit 2, one line), not a failed check.
    """
    ckpt = open_checkpoint(path)
    if ckpt.convention_source == "data" and ckpt.declared_convention != ckpt.format.zero_point_convention:
        report.checks.append(
            Check("zero-point label", False, f"config declares {ckpt.declared_convention}, data is {ckpt.format.zero_point_convention}: "
                  "loaders follow the label and misread every zero point", layer=ckpt.layers[0].name if ckpt.layers else None)
        )
        ckpt.close()
        ckpt = open_checkpoint(path, zero_point_convention=ckpt.declared_convention)
    else:
        report.checks.append(Check("zero-point label", True, f"{ckpt.format.zero_point_convention}, found by {ckpt.convention_source}"))
    return ckpt


def _config_class_check(ckpt: QuantizedCheckpoint) -> Check:
    qc = ckpt.ckpt.config.get("quantization_config")
    if not isinstance(qc, dict):
        return Check("config", True, f"no model-level quantization_config (the format's is {ckpt.format.config_file}, read above)")
    if not installed("transformers"):
        return Check("config", True, "transformers is not installed (woqconv[verify]): its config classes not asked")
    method = qc.get("quant_method")
    config_class = next((d.transformers_config for d in Detection.registry if method in d.quant_methods and d.transformers_config), None)
    if config_class is None:
        return Check("config", True, f"quant_method {method}: no transformers config class to ask")
    try:
        import transformers

        getattr(transformers, config_class).from_dict(dict(qc))
    except Exception as e:  # the loader's own verdict, whatever it raises
        return Check("config", False, f"transformers rejects quantization_config: {type(e).__name__}: {e}")
    return Check("config", True, f"transformers accepts the {qc.get('quant_method')} quantization_config")


def _completeness_check(ckpt: QuantizedCheckpoint) -> list[Check]:
    """Every linear of the architecture inside the decoder blocks must be quantized (like its siblings)."""
    if not ckpt.ckpt.has_config:
        return [Check("complete", True, "the checkpoint records no architecture (INC's default format) and no base model was given; "
                      "completeness not checked")]
    if not installed("transformers"):
        return [Check("complete", True, "transformers is not installed (woqconv[verify]): completeness not checked")]
    try:
        model = meta_model(ckpt.ckpt.config)
    except Exception as e:
        return [Check("complete", True, f"architecture not instantiable here ({type(e).__name__}); completeness not checked")]
    quantized = {layer.name[: -len(".linear")] if layer.name.endswith(".linear") else layer.name for layer in ckpt.layers}
    suffixes = {name.rsplit(".", 1)[-1] for name in quantized}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    expected = [n for n in linears if n.rsplit(".", 1)[-1] in suffixes]
    missing = [n for n in expected if n not in quantized]
    if missing:
        return [Check("complete", False, "quantized layer missing (its siblings in other blocks are quantized)", layer=n) for n in missing]
    return [Check("complete", True, f"{len(quantized)} quantized layers, none missing")]


def _group_view(out: QuantLinear, src: QuantLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero points and scales of both layers on a common footing: per group when both layers' groups
    are contiguous blocks (relabelled if needed), else per (channel, input) through each g_idx."""
    try:
        a, b = out.with_contiguous_groups(), src.with_contiguous_groups()
        return a.zeros, b.zeros, a.scales, b.scales
    except ValueError:  # a scattered g_idx on either side: compare what each input channel uses
        go, gs = out.group_of_channel().long(), src.group_of_channel().long()
        return out.zeros[:, go], src.zeros[:, gs], out.scales[:, go], src.scales[:, gs]


def _compare_dequantized(out, src, t: Thresholds) -> list[Check]:
    """Layers that cannot share integers (a codebook on either side, or act-order groups refitted): the
    same weights means the same dequantization; anything else is a requantization, judged by its error."""
    name = out.name
    if (out.in_features, out.out_features) != (src.in_features, src.out_features):
        return [Check("weights", False, f"shape {out.in_features}x{out.out_features}, source {src.in_features}x{src.out_features}", name)]
    a, b = out.dequantize(), src.dequantize()
    if torch.equal(a.view(torch.int32), b.view(torch.int32)):
        return [Check("weights", True, "bit-identical (dequantized)", name)]
    err = weight_error(b, a)
    ok = err["rel_fro"] <= t.requant_max_weight_rel_fro
    return [Check(REQUANTIZED, ok, f"relative Frobenius error {err['rel_fro']:.4g} (limit {t.requant_max_weight_rel_fro:g}), "
                  f"max |err| {err['max_abs']:.3g}, SNR {err['snr_db']:.2f} dB", name)]


def _refitted(out, src) -> bool:
    """New integers by design: a codebook on either side, or act-order groups refitted into contiguous
    ones (codes changed too; the same codes without their g_idx are a fault, reported as one)."""
    if isinstance(out, CodebookLinear) or isinstance(src, CodebookLinear):
        return True
    regrouped = src.g_idx_kind is GIdxKind.SCATTERED and out.g_idx_kind is not GIdxKind.SCATTERED
    return regrouped and out.codes is not None and src.codes is not None and not torch.equal(out.codes, src.codes)


def _codes_equal_unpacked_in_place(out: QuantizedCheckpoint, src: QuantizedCheckpoint, name: str) -> bool:
    """Whether the layer's codes are the same on both sides: each side's words unpacked by the format's
    own unpacking, as its reader does, and compared as ``[in, out]``, the orientation both packings
    unpack to, without the readers' transposes into ``[out, in]``. Independent of the converter's
    re-layout by construction. False also when the words cannot say (a format that does not keep
    its codes packed, a damaged tensor): the caller then reads both layers and counts what differs."""
    try:
        a = out.family.packed_codes(out.ckpt, name, out.format)
        b = src.family.packed_codes(src.ckpt, name, src.format)
        if a is None or b is None or a.bits != b.bits:
            return False
        return torch.equal(a.unpack_in_out(), b.unpack_in_out())
    except (WoqconvError, ValueError, RuntimeError):
        return False


def _compare_layer(out: QuantLinear, src: QuantLinear, *, bf16_scales: bool, t: Thresholds, codes_equal: bool = False) -> list[Check]:
    """``codes_equal``: the codes were found equal already (the layers may then come without them)."""
    name = out.name
    if not codes_equal and _refitted(out, src):
        return _compare_dequantized(out, src, t)
    if (out.in_features, out.out_features, out.bits) != (src.in_features, src.out_features, src.bits):
        return [Check("weights", False, f"shape/bits {out.in_features}x{out.out_features}@{out.bits}, source {src.in_features}x{src.out_features}@{src.bits}", name)]
    checks = []
    # Equal tensors are the common case, and torch.equal finds it without a mask the size of the layer
    # (17 of the 53 s of a 7B verify went to counting zero differences).
    diff = 0 if codes_equal or torch.equal(out.codes, src.codes) else int((out.codes != src.codes).sum())
    if diff:
        checks.append(Check("codes", False, f"{diff} codes differ from the source", name))
    z_out, z_src, s_out, s_src = _group_view(out, src)
    zdiff = int((z_out != z_src).sum())
    if zdiff:
        checks.append(Check("zero points", False, f"{zdiff} zero points differ from the source (or the groups they apply to)", name))
    if bf16_scales:
        delta = s_out.float() - s_src.float()
        changed = int(torch.count_nonzero(delta))
        rel = float(delta.norm() / s_src.float().norm().clamp_min(1e-30))
        worst = float((delta.abs() / s_src.float().abs().clamp_min(1e-30)).max())
        ok = rel <= t.bf16_max_weight_rel_fro and not diff and not zdiff
        # Codes and zero points equal, so the weight error is the scale error, group by group.
        if not changed:
            checks.append(Check("weights", ok, "bit-identical (every scale exact in bf16)", name))
        else:
            checks.append(Check("weights", ok, f"bf16 scales accepted: {changed} of {delta.numel()} changed, relative Frobenius error "
                                f"{rel:.3g}, largest relative scale change {worst:.3g}", name,
                                accepted={"kind": "bf16 scales", "changed": changed, "total": delta.numel(), "max_rel_change": worst}))
        return checks
    if out.scales.dtype != src.scales.dtype:
        checks.append(Check("scales dtype", False, f"scales are {out.scales.dtype}, source has {src.scales.dtype}", name))
    sdiff = int((s_out.float() != s_src.float()).sum())
    if sdiff:
        checks.append(Check("scales", False, f"{sdiff} scales differ from the source (or the groups they apply to)", name))
    if not checks:
        # Equal codes, zero points, scales and group assignment: the dequantized weights are identical.
        checks.append(Check("weights", True, "bit-identical", name))
    return checks


def _weights_checks(out: QuantizedCheckpoint, src: QuantizedCheckpoint, t: Thresholds, report: VerifyReport, workers: int = 1) -> None:
    """Compare every layer the two share, ``workers`` at a time (each holds both sides of one layer)."""
    out_names = {layer.name for layer in out.layers}
    src_names = {layer.name for layer in src.layers}
    for name in sorted(src_names - out_names):
        report.checks.append(Check("weights", False, "layer of the source missing from the output", name))
    for name in sorted(out_names - src_names):
        report.checks.append(Check("weights", False, "layer not in the source", name))
    bf16 = out.format.family == "hpu"

    def compare(name: str) -> list[Check]:
        # Equal codes, the common case, are found without the readers' transposes; only a layer that
        # differs is read whole on both sides, to count the differences. 7B `awq` against its source,
        # `--no-run`, 2 workers: 28.5-30.5 s against 38-39.5 s with the transposes of every layer.
        if _codes_equal_unpacked_in_place(out, src, name):
            checks = _compare_layer(out.read_layer(name, codes=False), src.read_layer(name, codes=False), bf16_scales=bf16, t=t,
                                    codes_equal=True)
        else:
            checks = _compare_layer(out.read_layer(name), src.read_layer(name), bf16_scales=bf16, t=t)
        release_freed_memory()
        return checks

    shared = [layer.name for layer in out.layers if layer.name in src_names]
    with compute_threads(workers):
        for checks in map_in_order(compare, shared, workers):
            report.checks.extend(checks)
    report.metrics["layers_compared" if not bf16 else "hpu_cache_layers_compared"] = len(out_names & src_names)


# What each loader's worker imports (woqconv.runtime.worker), each with the woqconv extra that installs it.
LOADER_NEEDS = {
    "transformers": (("transformers", "verify"),),
    "dense": (("transformers", "verify"),),
    "gptqmodel": (("gptqmodel", "verify"),),
    **{inc: (("neural_compressor", "inc"), ("transformers", "inc")) for inc in ("inc", "inc-default", "inc-hpu", "inc-hpu-default")},
}


def _require_loader(loader: str, ckpt: QuantizedCheckpoint | None) -> None:
    """One line naming what to install when ``loader`` (or the format it loads) is missing a module: not a
    failed check after a subprocess died."""
    if loader == VLLM and vllm_python() is None:
        raise WoqconvError(vllm_missing())
    needs = list(LOADER_NEEDS.get(loader, ()))
    detection = ckpt.format.detection if ckpt is not None else None
    if loader == "transformers" and detection is not None:
        needs += detection.transformers_needs
    for module, extra in needs:
        require(module, extra, f"verify's run in {loader}" + (f" ({ckpt.format.name})" if ckpt is not None else ""))


def _run_check(out_root: Path, loader: str, src: QuantizedCheckpoint | None, device: str, t: Thresholds, report: VerifyReport,
               step: Callable[[str], None], base: bases.BaseModel | None = None, weights_dtype: str = "float32") -> None:
    """Run OUT in ``loader`` and the reference (SRC in its loader, else woqconv's dense dequantization of OUT).
    ``weights_dtype``: a dense output's weights rounded to 16 bits are judged at that precision's limits."""
    report.loader = loader
    ref_loader, ref_path = (_source_loader(src), Path(src.root).resolve()) if src is not None else ("dense", out_root.resolve())
    report.reference = f"{ref_loader}:{ref_path}"
    step(f"loading and running the output with {loader} and the reference with {ref_loader} on {device}")
    with tempfile.TemporaryDirectory(prefix="woqconv-verify-") as tmp:
        got, ref = run_in_loaders(Path(tmp), device, [(loader, out_root), (ref_loader, ref_path)], base.root if base else None)
        for row, what in ((got, "output"), (ref, "reference")):
            if "error" in row:
                report.checks.append(Check("run", False, f"{what} did not load with {row['loader']}: {row['error']}"))
        if "error" in got or "error" in ref:
            return
        a, b = torch.load(got["file"]), torch.load(ref["file"])
    if loader == VLLM:
        a, b = _as_logprobs(a, b)
    bf16 = loader in BF16_LOADERS or weights_dtype == "bfloat16"
    report.device = got["device"] if loader in BF16_LOADERS else device
    max_abs = float((a - b).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    top1_raw = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    # A position where the reference prefers its top-1 over the output's pick by less than the logit
    # error this precision allows is a near-tie, not a disagreement (bf16 flips those on flat logits).
    pick_out, pick_ref = a.argmax(-1, keepdim=True), b.argmax(-1, keepdim=True)
    margin = (b.gather(-1, pick_ref) - b.gather(-1, pick_out)).squeeze(-1)
    limit_abs = t.bf16_max_abs_logit if bf16 else t.max_abs_logit
    top1 = float(((pick_out == pick_ref).squeeze(-1) | (margin <= limit_abs)).float().mean())
    ppl_rel = abs(got["ppl"] - ref["ppl"]) / ref["ppl"]
    limits = (
        (t.bf16_max_abs_logit, t.bf16_min_cosine, t.bf16_min_top1, t.bf16_max_ppl_rel) if bf16
        else (t.max_abs_logit, t.min_cosine, t.min_top1, t.max_ppl_rel)
    )
    if got["module"] == "Linear4bit" and ref["module"] != "Linear4bit" and device == "cpu":
        limits = (t.bnb_cpu_max_abs_logit, t.bnb_cpu_min_cosine, limits[2], limits[3])
    fp16 = loader == "gptqmodel" or weights_dtype == "float16"
    if fp16:
        limits = (t.fp16_max_abs_logit, t.fp16_min_cosine, limits[2], limits[3])
    if any(c.check == REQUANTIZED for c in report.checks):
        # New integers: the output runs close to the source, not equal to it; logits and top-1 are
        # reported, cosine and perplexity judged.
        limits = (float("inf"), t.requant_min_cosine, 0.0, t.requant_max_ppl_rel)
        report.metrics["requantized"] = True
    report.metrics.update(
        {"max_abs_logit_diff": max_abs, "cosine": cos, "top1_agreement": top1, "top1_agreement_raw": top1_raw,
         "ppl": got["ppl"], "ppl_reference": ref["ppl"],
         "loader_module": got["module"], "reference_module": ref["module"],
         "precision": "bf16" if bf16 else "fp16" if fp16 else "fp32"}
    )
    report.checks.append(Check("run: max |logit diff|", max_abs <= limits[0], f"{max_abs:.3g} (limit {limits[0]:g})"))
    report.checks.append(Check("run: cosine", cos >= limits[1], f"{cos:.6f} (limit {limits[1]:g})"))
    report.checks.append(Check("run: top-1 agreement", top1 >= limits[2], f"{top1:.1%} beyond near-ties, {top1_raw:.1%} raw (limit {limits[2]:.0%})"))
    report.checks.append(Check("run: perplexity", ppl_rel <= limits[3], f"{got['ppl']:.4g} vs {ref['ppl']:.4g} (relative {ppl_rel:.2g}, limit {limits[3]:g})"))


def _verify_dense(path: Path, against: Path | None, base: bases.BaseModel | None, device: str | None, t: Thresholds, workers: int,
                  step: Callable[[str], None], loader: str | None, start: float) -> VerifyReport:
    """A dense output (the dense target's): its weights against the source's dequantization, then a run in plain
    transformers (or ``loader``) beside the source in its own loader. Without ``against`` there is nothing to
    compare it with: a dense checkpoint is no quantized one to read."""
    from .dense_check import dense_weights_checks, weights_dtype

    report = VerifyReport(str(path), str(against) if against is not None else None, format="dense")
    if against is None:
        raise BadArgument(f"{path} is a dense checkpoint (no quantization_config): verify compares it with its quantized source; "
                          "give `against` (--against SRC)")
    step("reading the output and its source")
    with open_checkpoint(against) as src:
        dtype = weights_dtype(path, src.layers[0].name)
        if base is not None and not src.ckpt.has_config:
            src.ckpt.attach_base(base.root, base.files, base.config)
        if device is not None:
            _require_loader(loader or "transformers", None)
            _require_loader(_source_loader(src), src)
        report.checks.append(Check("structure", True, f"a dense checkpoint, weights in {dtype}, no quantization_config"))
        step(f"comparing the dense weights of {len(src.layers)} layers with the source's dequantization")
        dense_weights_checks(path, src, report, workers)
        if device is not None:
            _run_check(path, loader or "transformers", src, device, t, report, step, base, weights_dtype=dtype)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _source_loader(src: QuantizedCheckpoint) -> str:
    """The loader a source runs in: its format's answer (Detection.source_loader)."""
    detection = src.format.detection or Detection
    return detection.source_loader(src)


def _base_for(path: Path, against: Path | None, spec: str | os.PathLike | None) -> bases.BaseModel | None:
    """The base model: the one named, else the one INC recorded for OUT or SRC when either lacks config.json."""
    if spec is not None:
        return bases.resolve(spec)
    for ckpt in (path, against):
        if ckpt is not None and ckpt.is_dir() and not (ckpt / CONFIG_NAME).exists():
            found = bases.find_recorded(bases.recorded_model_path(ckpt))
            if found is not None:
                return found
    return None


def verify(
    path: str | os.PathLike,
    *,
    against: str | os.PathLike | None = None,
    base_model: str | os.PathLike | None = None,
    device: str = "auto",
    run: bool = True,
    thresholds: Thresholds | None = None,
    workers: int | None = None,
    step: Callable[[str], None] | None = None,
    loader: str | None = None,
) -> VerifyReport:
    """Check a converted checkpoint: structure, weights against ``against`` (its source), and a real run.

    ``workers`` layers are compared at once, in threads (by default one per core, at most 4).
    ``step(what)`` is told each step as it starts (reading, the architecture, the weights, the run).
    ``loader`` runs the output in another of woqconv's loaders than its format's own (``LOADERS``): ``"vllm"``
    serves it with vLLM, which reads compressed-tensors, AWQ and GPTQ.
    ``base_model`` (a directory or a Hub repo id) is the original model for checkpoints that record no
    architecture (INC's default format): INC's load needs it built, and so do the other checks. Without it,
    the ``model_path`` INC recorded is used when it is at hand, as :func:`woqconv.convert` does.

    Example::

        report = woqconv.verify("llama-awq", against="llama-gptq")
        assert report.passed, report.failures
    """
    start = time.perf_counter()
    step = step or (lambda what: None)
    t = thresholds or Thresholds()
    workers = default_workers() if workers is None else workers
    check_workers(workers)
    if loader is not None and loader not in LOADERS:
        raise BadArgument(f"`loader={loader!r}` is not one of woqconv's loaders ({', '.join(LOADERS)})")
    path = Path(path)
    if not path.exists():
        raise WoqconvError("no such file or directory", file=path)
    base = _base_for(path, Path(against) if against is not None else None, base_model)
    if (path / "openvino_model.xml").exists():  # an openvino output: read back and run by OpenVINO itself
        from .openvino_check import verify_openvino

        if run and against is not None and base is None and not (Path(against) / CONFIG_NAME).exists():
            raise WoqconvError(bases.missing_architecture(Path(against)), file=against)
        report = VerifyReport(str(path), str(against) if against else None, format="openvino")
        step("reading the OpenVINO IR" + (" and running it beside its source" if run and against is not None else ""))
        verify_openvino(path, Path(against) if against is not None else None, run, t, report, base, source_loader=_source_loader)
        return report
    dev = select_device(device).kind if run else None
    if is_dense_checkpoint(path):
        return _verify_dense(path, Path(against) if against is not None else None, base, dev, t, workers, step, loader, start)
    report = VerifyReport(str(path), str(against) if against else None, format="?")
    step("reading the output" + (" and its source" if against is not None else ""))
    out = _open_as_loader_reads(path, report)
    with out:
        # Both checkpoints are read (and refused when bad) before any check runs or any loader starts.
        src = open_checkpoint(against) if against is not None else None
        try:
            for ckpt in (out, src):
                if ckpt is not None and base is not None and not ckpt.ckpt.has_config:
                    ckpt.ckpt.attach_base(base.root, base.files, base.config)
                    bases.check_matches(base, ckpt)
            if run and base is None and any(c is not None and not c.ckpt.has_config for c in (out, src)):
                bare = out if not out.ckpt.has_config else src
                raise WoqconvError(bases.missing_architecture(bare.root), file=bare.root)
            if run:  # before any check: a missing loader is one line naming what to install
                _require_loader(loader or _loader_for(out), out)
                _require_loader(_source_loader(src) if src is not None else "dense", src)
            report.format = out.format.name
            report.checks.append(Check("structure", True, f"{len(out.layers)} quantized layers read, shapes and ranges consistent"))
            step("checking the config and the architecture")
            report.checks.append(_config_class_check(out))
            report.checks.extend(_completeness_check(out))
            if src is not None:
                step(f"comparing the weights of {len(out.layers)} layers with the source's")
                _weights_checks(out, src, t, report, workers)
                if out.format.family != "hpu" and any((out.root / c).exists() for c in HPU_CACHES):
                    with open_checkpoint(out.root, hpu_cache=True) as cache:
                        _weights_checks(cache, src, t, report, workers)
            if run:
                _run_check(out.root, loader or _loader_for(out), src, dev, t, report, step, base)
        finally:
            if src is not None:
                src.close()
    report.seconds = round(time.perf_counter() - start, 3)
    return report
