"""OpenVINO IR with NNCF-compressed weights (INT4/INT8, asymmetric or symmetric, grouped or per-channel).

The container (:mod:`woqconv.io.openvino_file`) finds each compressed linear's decompression sub-graph and
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

from ..._lazy import torch
from ...io.checkpoint import Checkpoint
from ...errors import FormatError
from ...ir import QuantLinear
from ...io.openvino_file import BIN_NAME, CONFIG_NAME, XML_NAME
from ...wording import counted
from ..base import ZP_V2, Detection, LayerFamily, SourceFormat, layer_error, require, validated

KEY = "openvino"
# A Hub repo's files this format reads or carries: the IR, optimum-intel's quantization record, and the
# tokenizer and detokenizer as OpenVINO models (openvino_tokenizers), which openvino.genai loads.
HUB_FILE_PATTERNS = (XML_NAME, BIN_NAME, CONFIG_NAME, "openvino_tokenizer.*", "openvino_detokenizer.*")
SCALE_DTYPES = ("F16", "BF16", "F32")


class OpenVinoFamily(LayerFamily, key=KEY):
    suffixes = ("codes", "zero_point", "scale", "bias")
    raw_zero_points = True

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
        tied = ", tied to the output head" if ir.tied_head else ""
        return [f"{counted(len(ir.densified), 'compressed weight')} {'feeds' if len(ir.densified) == 1 else 'feed'} an embedding "
                f"lookup or the output head ({', '.join(ir.densified)}){tied}, which Hugging Face quantized checkpoints keep dense: "
                "read as dense fp32 (q - z) * s, the values OpenVINO computes"]

    @classmethod
    def compression_table(cls, ckpt: Checkpoint) -> dict:
        """NNCF's "Statistics of the bitwidth distribution", rebuilt from the IR: every weight of a MatMul or
        Gather by compression mode, over all of them and over the ratio-defining ones (the linears NNCF's
        ``ratio`` chooses between primary and backup precision: all but the embedding and the output head).

        NNCF also counts MatMuls on unnamed float constants (a rotary table) as float layers; only named
        weights are counted here, so its layer totals can be one higher."""
        (ir,) = ckpt.shards.values()
        weights = [(p, c, True) for p, c in ir.compressed.items()] + [(p, c, False) for p, c in ir.densified.items()]
        rows: dict[tuple, dict] = {}
        for prefix, c, ratio_defining in weights:
            group = "per-channel" if c.groups == 1 else f"group size {c.in_features // c.groups}"
            mode = f"int{c.bits}_{'asym' if c.zero_point is not None else 'sym'}, {group}"
            _add_row(rows, mode, c.bits, prefix, c.out_features * c.in_features, ratio_defining)
        for name, shape in ir.float_linears.items():
            _add_row(rows, "float", 32, name.removesuffix(".weight"), shape[0] * shape[1], False)
        ordered = sorted(rows.values(), key=lambda r: (-r["bits"], *_mode_order(r["mode"])))
        return {
            "rows": ordered,
            "parameters": sum(r["parameters"] for r in ordered),
            "layers": sum(len(r["layers"]) for r in ordered),
            "ratio_defining_parameters": sum(r["ratio_defining_parameters"] for r in ordered),
            "ratio_defining_layers": sum(len(r["ratio_defining_layers"]) for r in ordered),
        }

    @classmethod
    def geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
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
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        return cls._zeros(ckpt, prefix, fmt.for_layer(prefix).bits, out, in_features // gs).T

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
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


def _add_row(rows: dict, mode: str, bits: int, name: str, weights: int, ratio_defining: bool) -> None:
    row = rows.setdefault((mode, bits), {"mode": mode, "bits": bits, "parameters": 0, "layers": [],
                                         "ratio_defining_parameters": 0, "ratio_defining_layers": []})
    row["parameters"] += weights
    row["layers"].append(name)
    if ratio_defining:
        row["ratio_defining_parameters"] += weights
        row["ratio_defining_layers"].append(name)


def _mode_order(mode: str) -> tuple[str, int]:
    """NNCF's order within one bit width: by mode name, then group size (per-channel first)."""
    base, _, group = mode.partition(", group size ")
    return (base, int(group)) if group else (mode, -1)


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




class OpenVinoDetection(Detection):
    """An OpenVINO IR has no quantization config: the graph's compressed constants say it all."""

    hub_files = HUB_FILE_PATTERNS

    @classmethod
    def source_loader(cls, src) -> str:
        return "openvino"  # OVModelForCausalLM, in the OpenVINO environment

    @classmethod
    def claims(cls, ckpt: Checkpoint) -> bool:
        return ckpt.container == "openvino-ir"

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> SourceFormat:
        return detect(ckpt)
