"""Convert a checkpoint from one format to another: plan, validate, then stream to disk atomically."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import base_model as bases
from ..io.checkpoint import CONFIG_NAME, FileSnapshot
from ..compute import compute_threads, default_workers
from ..errors import check_workers
from ..source import open_checkpoint
from ..io.output import output_path, check_output, commit_partial, discard_partial, start_partial, write_error
from .plan import ConversionPlan, plan_conversion
from .write import layer_to_write, measure_losses, total_source_bytes, write_plan
from ..wording import lossy_lines


@dataclass
class ConvertReport:
    """What a conversion did. ``lossless`` is True when every layer's IR was carried bit for bit."""

    source: str
    output: str
    source_format: str
    target: str
    layers_converted: int
    lossless: bool
    layer_changes: dict[str, list[str]]
    tensors_copied: int
    files_copied: list[str]
    files_rewritten: list[str]  # every file written anew beside the weights ...
    files_added: list[str]  # ... and those of them the source did not have (a Gaudi cache, INC's qconfig.json)
    files_dropped: list[str]
    bytes_in: int
    bytes_out: int
    seconds: float
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)
    # Lossy steps the user accepted (only with allow_bf16): per layer {"scales_changed", "scales_total",
    # "max_rel_change"}, and unquantized tensors cast to bf16 (name -> source dtype).
    lossy_layers: dict[str, dict] = field(default_factory=dict)
    cast_tensors: dict[str, str] = field(default_factory=dict)
    # Per requantized layer (only with requantize): {"method", "rel_fro", "max_abs", "snr_db", and
    # "minmax": the same figures for plain min-max rounding of the same weights}.
    requantized: dict[str, dict] = field(default_factory=dict)
    # The original model the architecture files came from (its label and how it was found), and which
    # of its files the output took; None when the source records its own architecture.
    base_model: str | None = None
    files_from_base: list[str] = field(default_factory=list)
    # Unquantized 16-bit tensors written as fp32 (exact): name -> source dtype (the inc and dense targets).
    widened_tensors: dict[str, str] = field(default_factory=dict)
    widened_because: str = ""
    # Tensors only the producer's own loader uses, left out of a plain (dense) model: name list.
    tensors_dropped: list[str] = field(default_factory=list)
    # Per layer whose dequantized weights a 16-bit dense output rounds: {"kind": "rounding", "dtype",
    # "values_changed", "values_total", "max_abs", "rel_fro"} (against the fp32 products).
    rounded: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def lossy_lines(self) -> list[str]:
        """One plain sentence per kind of loss accepted (bf16 scales, double quantization, requantization)."""
        return lossy_lines(self.lossy_layers, self.requantized, self.rounded)


def _files_rewritten(config: dict | None, extra_json: dict[str, dict], index: bool, companion: str | None = None) -> list[str]:
    """The files a conversion writes anew beside the weights, as the report lists them."""
    rewritten = ["config.json"] if config is not None else []
    rewritten += sorted(extra_json)
    if index:
        rewritten.append("model.safetensors.index.json")
    if companion:
        rewritten.append(companion)
    return rewritten


def _report(plan: ConversionPlan, out: Path, bytes_in: int, bytes_out: int, seconds: float, dry_run: bool, warnings: list[str],
            base: bases.BaseModel | None) -> ConvertReport:
    rewritten = _files_rewritten(plan.config, plan.extra_json, plan.sharded and plan.target.container == "safetensors",
                                 plan.target.companion.file if plan.target.companion else plan.target.default_hpu_cache)
    return ConvertReport(
        source=str(plan.source.root),
        output=str(out),
        source_format=plan.source.format.name,
        target=plan.target.name,
        layers_converted=len(plan.prepared),
        lossless=not (plan.lossy_layers or plan.companion_casts or plan.write_losses),
        layer_changes=plan.layer_changes,
        tensors_copied=sum(len(s.passthrough) for s in plan.shards),
        files_copied=list(plan.copied_files),
        files_rewritten=rewritten,
        files_added=[name for name in rewritten if not (plan.source.root / name).exists()],
        files_dropped=list(plan.dropped_files),
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        seconds=round(seconds, 3),
        dry_run=dry_run,
        warnings=warnings,
        lossy_layers=plan.lossy_layers,
        cast_tensors=dict(plan.companion_casts),
        requantized={n: plan.requant_stats[n] for n in sorted(plan.requant_stats)},
        base_model=base.describe() if base else None,
        files_from_base=sorted(plan.source.ckpt.borrowed),
        widened_tensors=dict(plan.widened),
        widened_because=plan.target.carried_float_reason if plan.widened else "",
        rounded={n: plan.write_losses[n] for n in sorted(plan.write_losses)},
        tensors_dropped=list(plan.dropped_tensors),
    )


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    base_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    allow_bf16: bool = False,
    requantize: str | None = None,
    double_quant: bool = False,
    dtype: str | None = None,
    zero_point_convention: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> ConvertReport:
    """Convert the checkpoint at ``src`` into format ``to`` at ``out``.

    Every layer is checked before anything is written; a conversion that cannot be lossless raises
    :class:`woqconv.errors.RefusedConversion`, except the one loss a user may accept explicitly:
    ``allow_bf16=True`` lets the ``hpu`` target cast scales and unquantized tensors to bf16 (Gaudi's
    dtype), reported per layer in ``lossy_layers``. ``requantize="search"`` (or ``"minmax"``) refits the
    layers no lossless path reaches (NF4 <-> uint4, scattered act-order for targets without g_idx) and
    reports each one's weight error in ``requantized``; a dry run computes those errors without writing.
    ``double_quant=True`` stores bitsandbytes absmax double-quantized (nf4/fp4 targets; lossy, reported).
    ``dtype`` is the dense target's weights dtype: ``"float32"`` (the default) holds ``dequantize()`` exactly;
    ``"float16"`` and ``"bfloat16"`` round it, measured per layer in ``rounded``.
    ``out`` appears only when complete (it is built in a hidden sibling directory and renamed).
    ``progress(done, total)`` receives source bytes.
    ``workers`` layers are re-laid out and written in parallel threads (memory: one layer each); by
    default one per core, at most 4.
    ``base_model`` names the original unquantized model (a local directory or a Hub repo id), as INC's
    ``original_model`` does: a checkpoint that records no architecture (INC's default format) takes its
    ``config.json``, ``generation_config.json`` and tokenizer files from it, never its weights. Without it, the
    ``model_path`` INC recorded in ``qconfig.json`` is used when it is a local directory or a cached Hub repo.
    A base whose architecture is not the checkpoint's is refused.

    Example::

        report = woqconv.convert("llama-gptq", "llama-awq", to="awq")
        assert report.lossless
    """
    workers = default_workers() if workers is None else workers
    check_workers(workers)
    start = time.perf_counter()
    src_path, out_path = Path(src), output_path(out)
    # Before anything reads the source: a file written to or replaced from here on fails the conversion
    # instead of mixing two versions into its output.
    source_files = FileSnapshot.take(src_path)
    base = base_for(src_path, base_model)
    # torch, where some layer needs it, computes with one thread per worker (compute.py); a plan of byte
    # operations alone never imports it.
    with compute_threads(workers), open_checkpoint(src_path, zero_point_convention=zero_point_convention, workers=workers,
                                                   read_layers=False) as source:
        if base is not None:
            source.ckpt.attach_base(base.root, base.files, base.config)
        plan = plan_conversion(source, to, allow_bf16=allow_bf16, requantize=requantize, double_quant=double_quant, dtype=dtype,
                               workers=workers)
        if base is not None:
            bases.check_matches(base, source)  # the plan read every layer's shell; nothing is written yet
        check_output(src_path, out_path, overwrite=overwrite)
        total = total_source_bytes(plan)
        warnings = list(source.warnings) + plan.warnings
        if dry_run:
            if plan.requantized_layers or plan.target.lossy_encoding:
                measure_losses(plan)
            return _report(plan, out_path, total, 0, time.perf_counter() - start, True, warnings, base)

        def write(partial: Path, tick: Callable[[int], None]) -> int:
            whole = plan.target.write_whole(plan, partial, layer_to_write, tick)
            return whole if whole is not None else write_plan(plan, partial, tick, workers=workers)

        written = _write_atomically(out_path, warnings, total, progress, write, source_files)
        return _report(plan, out_path, total, written, time.perf_counter() - start, False, warnings, base)


def base_for(src: Path, spec: str | os.PathLike | None) -> bases.BaseModel | None:
    """The base model a conversion of ``src`` uses: the one named, else, for a checkpoint that records no
    architecture, the original model INC recorded, when it is at hand (a local directory or cached repo)."""
    if spec is not None:
        return bases.resolve(spec)
    if (src / CONFIG_NAME).exists():
        return None
    return bases.find_recorded(bases.recorded_model_path(src))


def _write_atomically(out_path: Path, warnings: list[str], total: int, progress: Callable[[int, int], None] | None,
                      write: Callable[[Path, Callable[[int], None]], int], source_files: FileSnapshot) -> int:
    """Run ``write(partial, tick)`` into a new hidden partial directory and rename it into place unless a
    file of ``source_files`` changed meanwhile; on any failure remove what was written. Returns bytes written."""
    partial, cleaned = start_partial(out_path)
    for name in cleaned:
        warnings.append(f"removed a partial output left by an interrupted run ({name})")
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if progress:
        progress(0, total)  # writing starts: a display can appear now, before the first bytes (OpenVINO exports first)
    try:
        written = write(partial, tick)
        source_files.check_unchanged()
        commit_partial(partial, out_path)
    except BaseException as e:
        discard_partial(partial)
        if isinstance(e, OSError):
            raise write_error(e, out_path) from None
        raise
    return written
