"""What every format adapter provides, and the registries that find them by name.

An adapter for a tensor layout ("family") reads one quantized linear from a checkpoint into the IR
and encodes an IR layer back into named tensors. A *target* is a family plus the conventions and
config a downstream loader expects (GPTQ v1 vs v2 zero points, ...). Adapters never import each
other; the converter talks to them only through these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from .. import safetensors_io
from .._lazy import torch
from ..checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import PackedCodes, QuantLinear
from ..safetensors_io import SafetensorsFile, TensorSpec

ZP_V1 = "v1"  # stored z - 1 per field (GPTQ checkpoint_format "gptq")
ZP_V2 = "v2"  # stored z (GPTQ v2, AWQ, AutoRound raw)
ZP_V1_WORD = "v1-word"  # GPTQModel's v1: z - 0x11..11 subtracted from the whole word


@dataclass
class SourceFormat:
    """What a checkpoint is, as detected from its config and checked against its tensors."""

    name: str  # woqconv's name for the layout + convention: "gptq", "gptq-v2", "awq"
    family: str  # tensor layout: "gptq" or "awq"
    bits: int
    group_size: int  # as declared; -1 means one group per row
    sym: bool | None  # as declared
    zero_point_convention: str  # as declared (ZP_V1 / ZP_V2 / ZP_V1_WORD)
    quant_method: str
    producer: str
    packing_format: str | None = None
    desc_act: bool | None = None
    declared_config: dict = field(default_factory=dict)
    config_file: str = "config.json"
    # Mixed precision: layers whose settings differ from the ones above (GPTQModel's ``dynamic``, INC's
    # per-module entries, NNCF's ratio/backup_mode), layer prefix -> {"bits", "group_size", "sym"}.
    layer_overrides: dict[str, dict] = field(default_factory=dict)

    def for_layer(self, prefix: str) -> "SourceFormat":
        """The format as it applies to one layer: the model-level settings with that layer's overrides."""
        overrides = self.layer_overrides.get(prefix)
        return replace(self, **overrides, layer_overrides={}) if overrides else self


class LayerFamily:
    """A tensor layout for affine-quantized linears. Subclasses register by ``key``."""

    key: ClassVar[str]
    registry: ClassVar[dict[str, type["LayerFamily"]]] = {}
    # Tensor suffixes this family owns on each quantized module.
    suffixes: ClassVar[tuple[str, ...]]
    # Codebook families (bitsandbytes, INC nf4/fp4) read into CodebookLinear and have no zero points.
    codebook: ClassVar[bool] = False
    # encode() takes a layer whose codes are still packed (QuantLinear.packed), via QuantLinear.pack_codes.
    encodes_packed: ClassVar[bool] = False

    def __init_subclass__(cls, key: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if key:
            cls.key = key
            LayerFamily.registry[key] = cls

    # -- reading --------------------------------------------------------------------------
    @classmethod
    def layer_prefixes(cls, ckpt: Checkpoint) -> list[str]:
        return sorted(n[: -len(".qweight")] for n in ckpt.locations if n.endswith(".qweight"))

    @classmethod
    def owned_tensors(cls, ckpt: Checkpoint, prefix: str) -> list[str]:
        return [f"{prefix}.{s}" for s in cls.suffixes if ckpt.has(f"{prefix}.{s}")]

    @classmethod
    def source_notes(cls, ckpt: Checkpoint) -> list[str]:
        """What this layout's reader changed or could not keep, for inspect and convert to report."""
        return []

    @classmethod
    def compression_table(cls, ckpt: Checkpoint) -> dict | None:
        """The producer's own account of which weights it compressed how (NNCF's bitwidth table for OpenVINO
        IRs), for inspect; None where the format has none beyond the per-layer precisions."""
        return None

    @classmethod
    def packed_codes(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> PackedCodes | None:
        """The layer's codes as stored, without unpacking them (None: this family cannot say)."""
        return None

    # Subclasses define:
    #   read(ckpt, prefix, fmt, *, codes=True) -> QuantLinear     (codes=False: planning, no qweight read)
    #   stored_zero_fields(ckpt, prefix, fmt) -> uint8 [G, out]   (the fields as the file stores them)
    #   specs(layer) -> list[TensorSpec]                          (what encode() will produce)
    #   encode(layer, zero_point_convention) -> {name: tensor}


def packed_source_words(ckpt: Checkpoint, name: str, bits: int, dim: int, slot_order: tuple[int, ...] | None) -> PackedCodes:
    """The codes tensor ``name`` as PackedCodes, read lazily; copyable unread from a safetensors shard."""
    shard = ckpt.shards[ckpt.locations[name]]
    origin = (shard, name) if isinstance(shard, SafetensorsFile) else None
    return PackedCodes(bits, dim, slot_order, ckpt.info(name).shape, lambda: ckpt.read(name), origin)


def require(ckpt: Checkpoint, name: str, what: str) -> None:
    if not ckpt.has(name):
        raise FormatError(f"quantized layer has no {what} tensor", file=ckpt.root, tensor=name)
    if ckpt.info(name).numel == 0:  # a layer of no weights has no geometry (in_features 0 divides nothing)
        raise FormatError(f"{what} is empty (shape {list(ckpt.info(name).shape)})", file=ckpt.file_of(name), tensor=name)


def expect_dtype(ckpt: Checkpoint, name: str, dtypes: tuple[str, ...]) -> None:
    info = ckpt.info(name)
    if info.dtype not in dtypes:
        raise FormatError(f"dtype {info.dtype}, expected {' or '.join(dtypes)}", file=ckpt.file_of(name), tensor=name)


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, safetensors_io.DTYPE_NAMES[t.dtype], tuple(t.shape))


def validated(ckpt: Checkpoint, prefix: str, layer: QuantLinear) -> QuantLinear:
    """Every reader's last step: the IR's own consistency check, as an error naming the layer."""
    problem = layer.validate()
    if problem:
        raise layer_error(ckpt, prefix, "qweight", problem)
    return layer


def layer_error(ckpt: Checkpoint, prefix: str, tensor_suffix: str, problem: str) -> FormatError:
    name = f"{prefix}.{tensor_suffix}"
    file = ckpt.file_of(name) if ckpt.has(name) else ckpt.root
    return FormatError(problem, file=file, tensor=name)
