"""AutoRound (``quant_method: auto-round``): which GPTQ/AWQ packing each ``packing_format`` means.

AutoRound writes no layout of its own; it reuses GPTQ and AWQ packings with its own zero-point
conventions (FORMATS.md 5, auto-round's ``inference/backend.py``):

  auto_round:auto_gptq, auto_round:gptq   GPTQ layout, v1 zero points (z-1; its packer clamps z=0 to stored 0)
  auto_round, auto_round:gptqmodel        GPTQ layout, raw zero points (v2-like)
  auto_round:auto_awq, auto_round:awq     AWQ GEMM layout, raw zero points
"""

from __future__ import annotations

import re

from ..io.checkpoint import Checkpoint
from ..errors import FormatError
from . import detect
from .base import ZP_V1, ZP_V2, Detection, SourceFormat

QUANT_METHODS = ("auto-round", "autoround", "intel/auto-round")

# packing_format -> (family, zero-point convention, woqconv format name)
PACKINGS: dict[str, tuple[str, str, str]] = {
    "auto_round:auto_gptq": ("gptq", ZP_V1, "gptq"),
    "auto_round:gptq": ("gptq", ZP_V1, "gptq"),
    "auto_round": ("gptq", ZP_V2, "gptq-v2"),
    "auto_round:gptqmodel": ("gptq", ZP_V2, "gptq-v2"),
    "auto_round:auto_awq": ("awq", ZP_V2, "awq"),
    "auto_round:awq": ("awq", ZP_V2, "awq"),
}
# transformers' AutoRoundConfig assumes this when a config names no packing_format.
DEFAULT_PACKING = "auto_round:gptq"


def resolve(quantization_config: dict) -> tuple[str, str, str, str] | str:
    """(packing_format, family, convention, format name) or a one-line reason it is unsupported."""
    packing = quantization_config.get("packing_format") or DEFAULT_PACKING
    data_type = quantization_config.get("data_type", "int")
    if data_type not in ("int", "int_sym", "int_asym"):
        return f"AutoRound data_type {data_type!r} is not an integer affine format"
    if not isinstance(packing, str) or packing not in PACKINGS:  # a JSON list or object is no name (and unhashable)
        return f"AutoRound packing_format {packing!r} is not supported (known: {', '.join(sorted(PACKINGS))})"
    return (packing, *PACKINGS[packing])


def extra_config_override(extra_config: dict, module: str) -> dict | bool | None:
    """AutoRound's per-layer ``extra_config`` for one module: its overrides (bits, group_size, sym), False when
    it is kept unquantized (bits >= 16), None when no entry applies. Keys are module names; a key that is no
    module name is a regex searched in the name (AutoRound's to_standard_regex wraps plain names in ``.*``)."""
    entry = extra_config.get(module)
    if entry is None:
        for key, value in extra_config.items():
            try:
                if re.search(key, module):
                    entry = value
                    break
            except re.error as e:
                raise ValueError(f"extra_config key {key!r} is not a module name or a valid regex ({e})") from None
    if entry is None:
        return None
    if int((entry or {}).get("bits", 0) or 0) >= 16:
        return False
    return {k: v for k, v in (entry or {}).items() if k in ("bits", "group_size", "sym")}


class AutoRoundDetection(Detection):
    """``quant_method: auto-round``: a GPTQ or AWQ packing, named by ``packing_format``; ``extra_config``
    sets bits and groups per layer."""

    quant_methods = QUANT_METHODS
    transformers_needs = (("auto_round", "autoround"),)
    override_tables = {"extra_config": extra_config_override}

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        resolved = resolve(qc)
        if isinstance(resolved, str):
            raise FormatError(resolved, file=ckpt.root / file)
        packing_format, family, convention, name = resolved
        producer = detect.producer(qc, ckpt)
        return detect.affine_format(ckpt, qc, file, name=name, family=family, convention=convention, method=method,
                                    producer="auto-round" if producer == "unknown" else producer, packing_format=packing_format)
