"""``woqconv inspect``: what a local checkpoint is (woqconv.inspect_report builds the report), and for each
engine that cannot load it as it stands, the conversion that fixes it, planned on the checkpoint itself."""

from __future__ import annotations

import os
from pathlib import Path

from .base_model import check_matches, find_recorded, recorded_model_path, resolve
from .compute import compute_threads
from .convert.plan import plan_conversion
from .errors import WoqconvError
from .formats import TARGETS
from .io.checkpoint import CONFIG_NAME
from .inspect_report import InspectReport, LayerInfo, architecture_summary, engine_rows, gaudi_cache, report_for  # noqa: F401  (the API's names)
from .source import QuantizedCheckpoint, open_checkpoint


def inspect(path: str | os.PathLike, *, zero_point_convention: str = "auto", base_model: str | os.PathLike | None = None,
            fixes: bool = True) -> InspectReport:
    """Describe a quantized checkpoint: format, conventions found in the data, layers, warnings.

    Reads the safetensors headers and only the small tensors (qzeros, scales, g_idx, bitsandbytes absmax and
    quant state); never the codes. GPTQ and AWQ GEMM checkpoints in safetensors are read with numpy
    alone (no torch import, which costs more than the rest), by the same scan a conversion plans from.

    The architecture comes from the checkpoint's config.json. INC's default format records none: then
    ``base_model`` (a directory or a Hub repo id; by default the ``model_path`` INC recorded, when at hand)
    supplies it, after a check that it matches the checkpoint's tensors.

    ``engines`` says which inference engines load the checkpoint as it stands; for each that does not, the
    ``--to`` that fixes it, found by planning that conversion on the checkpoint (every layer checked, nothing
    written; targets without a byte route read the small tensors with torch). ``fixes=False`` skips the
    planning: verdicts only.

    Example::

        report = woqconv.inspect("llama-gptq")
        print(report.format, report.bits, report.group_size, report.zero_point_convention)
    """
    root = Path(path)
    base = resolve(base_model) if base_model is not None else None
    recorded = recorded_model_path(root) if root.is_dir() else None
    if base is None and root.is_dir() and not (root / CONFIG_NAME).exists():
        base = find_recorded(recorded)
    # Layers come from the source's numpy scan where it reads them all (GPTQ, AWQ GEMM in safetensors): no torch.
    with compute_threads(1), open_checkpoint(path, zero_point_convention=zero_point_convention, read_layers=False) as src:
        report = report_for(src)
        if base is not None:
            check_matches(base, src)
            src.ckpt.attach_base(base.root, base.files, base.config)
        report.gaudi_cache = gaudi_cache(src)
        if base is not None and not (root / CONFIG_NAME).exists():
            report.architecture, report.architecture_from = architecture_summary(base.config), base.describe()
        report.engines = engine_rows(report, (lambda name: _planned(src, name)) if fixes else None)
    return report


def _planned(src: QuantizedCheckpoint, name: str) -> dict | None:
    """Whether converting ``src`` into target ``name`` would succeed: the converter's own plan (every layer
    checked, nothing written). Lossless, or lossy only by what ``--allow-bf16`` accepts; None when refused."""
    try:
        plan = plan_conversion(src, name, allow_bf16=True)
    except WoqconvError:
        return None
    lossless = not (plan.lossy_layers or plan.companion_casts)
    return {"flags": [] if lossless else ["--allow-bf16"], "lossless": lossless, "note": TARGETS[name].fix_note}
