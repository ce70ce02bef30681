"""OpenVINO IR with NNCF-compressed weights (INT4/INT8, asymmetric or symmetric, grouped or per-channel).

The container (:mod:`woqconv.openvino_file`) finds each compressed linear's decompression sub-graph and
names its pieces by the Hugging Face module they came from:

  P.codes       uint8 [out, in]   the unsigned level q (u4 unpacked low nibble first; i4/i8 shifted by 2^(b-1))
  P.zero_point  uint8 [out, G]    the true z (u4/u8); absent for symmetric modes, where z = 2^(b-1) exactly
  P.scale       float [out, G]    as stored (NNCF writes f16)

so ``W = (q - z) * s`` per group of ``in / G`` channels, which is the IR's own definition. Each layer has
its own bits and group size (NNCF's ``ratio`` puts some linears at INT4 group 64 and the rest at the INT8
``backup_mode``, per channel): the most common setting is the model's, the others are per-layer overrides.
"""

from __future__ import annotations

from collections import Counter

from .._lazy import torch
from ..checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import QuantLinear
from .base import ZP_V2, LayerFamily, SourceFormat, layer_error, require, validated

KEY = "openvino"
SCALE_DTYPES = ("F16", "BF16", "F32")


class OpenVinoFamily(LayerFamily, key=KEY):
    suffixes = ("codes", "zero_point", "scale", "bias")

    @classmethod
    def layer_prefixes(cls, ckpt: Checkpoint) -> list[str]:
        return sorted(n[: -len(".codes")] for n in ckpt.locations if n.endswith(".codes"))

    @classmethod
    def source_notes(cls, ckpt: Checkpoint) -> list[str]:
        """The compressed weights read as dense ones: NNCF compresses the embedding and lm_head (8-bit by default),
        which the Hugging Face quantized formats keep unquantized."""
        (ir,) = ckpt.shards.values()
        if not ir.densified:
            return []
        return [f"{len(ir.densified)} compressed weights feed an embedding lookup or the output head ({', '.join(ir.densified)}), "
                "which Hugging Face quantized checkpoints keep dense: read as dense fp32 (q - z) * s, the values OpenVINO computes"]

    @classmethod
    def _geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
        require(ckpt, f"{prefix}.codes", "codes")
        require(ckpt, f"{prefix}.scale", "scale")
        out, in_features = ckpt.info(f"{prefix}.codes").shape
        groups = ckpt.info(f"{prefix}.scale").shape[1]
        if in_features % groups:
            raise layer_error(ckpt, prefix, "scale", f"{groups} groups do not divide {in_features} input channels")
        return in_features, out, in_features // groups

    @classmethod
    def _zeros(cls, ckpt: Checkpoint, prefix: str, bits: int, out: int, groups: int) -> torch.Tensor:
        if ckpt.has(f"{prefix}.zero_point"):
            return ckpt.read(f"{prefix}.zero_point")
        return torch.full((out, groups), 1 << (bits - 1), dtype=torch.uint8)  # symmetric i4/i8

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        in_features, out, gs = cls._geometry(ckpt, prefix, fmt)
        return cls._zeros(ckpt, prefix, fmt.for_layer(prefix).bits, out, in_features // gs).T

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls._geometry(ckpt, prefix, fmt)
        bits = fmt.for_layer(prefix).bits
        layer = QuantLinear(
            name=prefix, in_features=in_features, out_features=out, bits=bits, group_size=gs,
            zeros=cls._zeros(ckpt, prefix, bits, out, in_features // gs),
            scales=ckpt.read(f"{prefix}.scale"),
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            layer.codes = ckpt.read(f"{prefix}.codes")
        return validated(ckpt, prefix, layer)


def detect(ckpt: Checkpoint) -> SourceFormat:
    """The IR's compressed linears, each with its own bits/group size; the most common pair is the model's."""
    (ir,) = ckpt.shards.values()
    prefixes = OpenVinoFamily.layer_prefixes(ckpt)
    if not prefixes:
        raise FormatError("no INT4/INT8-compressed linear (u4/i4/u8/i8 constant feeding a MatMul) in this IR", file=ir.path)
    settings = {}
    for p in prefixes:
        c = ir.compressed[p]
        gs = -1 if c.groups == 1 else c.in_features // c.groups
        settings[p] = {"bits": c.bits, "group_size": gs, "sym": c.zero_point is None}
    base = Counter(tuple(s.values()) for s in settings.values()).most_common(1)[0][0]
    bits, group_size, sym = base
    overrides = {p: s for p, s in settings.items() if tuple(s.values()) != base}
    modes = sorted({f"int{s['bits']}_{'sym' if s['sym'] else 'asym'}" for s in settings.values()})
    return SourceFormat(
        name=KEY, family=KEY, bits=bits, group_size=group_size, sym=sym, zero_point_convention=ZP_V2,
        quant_method="openvino", producer="openvino ir (nncf weight compression)",
        declared_config={"modes": modes, "densified": list(ir.densified)}, config_file=ir.path.name,
        layer_overrides=overrides,
    )


