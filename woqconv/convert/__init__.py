"""Convert a checkpoint from one format to another: plan, validate, then stream to disk atomically."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..compute import compute_threads
from ..source import open_checkpoint
from .output import check_output, commit_partial, discard_partial, start_partial
from .plan import ConversionPlan, plan_conversion
from .stream import total_source_bytes, write_plan


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
    files_rewritten: list[str]
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

    def to_dict(self) -> dict:
        return asdict(self)


def _report(plan: ConversionPlan, out: Path, bytes_in: int, bytes_out: int, seconds: float, dry_run: bool, warnings: list[str]) -> ConvertReport:
    rewritten = ["config.json"] if plan.config is not None else []
    rewritten += sorted(plan.extra_json)
    if plan.sharded and plan.target.container == "safetensors":
        rewritten.append("model.safetensors.index.json")
    if plan.target.companion:
        rewritten.append(plan.target.companion.file)
    return ConvertReport(
        source=str(plan.source.root),
        output=str(out),
        source_format=plan.source.format.name,
        target=plan.target.name,
        layers_converted=len(plan.prepared),
        lossless=not (plan.lossy_layers or plan.companion_casts),
        layer_changes=plan.layer_changes,
        tensors_copied=sum(len(s.passthrough) for s in plan.shards),
        files_copied=list(plan.copied_files),
        files_rewritten=rewritten,
        files_dropped=list(plan.dropped_files),
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        seconds=round(seconds, 3),
        dry_run=dry_run,
        warnings=warnings,
        lossy_layers=plan.lossy_layers,
        cast_tensors=dict(plan.companion_casts),
    )


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    overwrite: bool = False,
    dry_run: bool = False,
    allow_bf16: bool = False,
    zero_point_convention: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> ConvertReport:
    """Convert the checkpoint at ``src`` into format ``to`` at ``out``.

    Every layer is checked before anything is written; a conversion that cannot be lossless raises
    :class:`woqconv.errors.RefusedConversion`, except the one loss a user may accept explicitly:
    ``allow_bf16=True`` lets the ``hpu`` target cast scales and unquantized tensors to bf16 (Gaudi's
    dtype), reported per layer in ``lossy_layers``. ``out`` appears only when complete (it is built in a
    hidden sibling directory and renamed). ``progress(done, total)`` receives source bytes.
    ``workers`` layers are re-laid out and written in parallel threads (memory: one layer each).

    Example::

        report = woqconv.convert("llama-gptq", "llama-awq", to="awq")
        assert report.lossless
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    src_path, out_path = Path(src), Path(out)
    with compute_threads(workers), open_checkpoint(src_path, zero_point_convention=zero_point_convention) as source:
        plan = plan_conversion(source, to, allow_bf16=allow_bf16)
        check_output(src_path, out_path, overwrite=overwrite)
        total = total_source_bytes(plan)
        warnings = list(source.warnings) + plan.warnings
        if dry_run:
            return _report(plan, out_path, total, 0, time.perf_counter() - start, True, warnings)
        partial, cleaned = start_partial(out_path)
        if cleaned:
            warnings.append(f"removed a partial output left by an interrupted run ({partial.name})")
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        try:
            written = write_plan(plan, partial, tick, workers=workers)
            commit_partial(partial, out_path)
        except BaseException:
            discard_partial(partial)
            raise
        return _report(plan, out_path, total, written, time.perf_counter() - start, False, warnings)
