"""What every format adapter provides, and the registries that find them by name.

An adapter for a tensor layout ("family") reads one quantized linear from a checkpoint into the IR
and encodes an IR layer back into named tensors. A *target* is a family plus the conventions and
config a downstream loader expects (GPTQ v1 vs v2 zero points, ...). Adapters never import each
other; the converter talks to them only through these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

from . import scan as numpy_scan
from ..io import safetensors_io
from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import PackedCodes, QuantLinear
from ..io.safetensors_io import TensorSpec

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
    # The Detection that recognised the checkpoint (set by formats/detect.py): what verify asks for the
    # loader a source runs in.
    detection: type | None = field(default=None, repr=False, compare=False)

    def for_layer(self, prefix: str) -> "SourceFormat":
        """The format as it applies to one layer: the model-level settings with that layer's overrides."""
        overrides = self.layer_overrides.get(prefix)
        return replace(self, **overrides, layer_overrides={}) if overrides else self


def effective_group_size(declared: int, in_features: int) -> int:
    """The group size a layer has: the declared one, or one group per row for -1, 0 or one past the row."""
    return in_features if declared in (-1, 0) or declared >= in_features else declared


class Detection:
    """How one format recognises its checkpoints. Subclasses register in definition order (the order
    formats/__init__.py imports their modules), which is the order formats/detect.py asks them in."""

    registry: ClassVar[list[type["Detection"]]] = []
    # quantization_config.quant_method values this format reads (the first names it in messages).
    quant_methods: ClassVar[tuple[str, ...]] = ()
    # Config files of its own beside config.json that hold the quantization config, and those of them
    # that name no quant_method (AutoGPTQ's quantize_config.json).
    config_files: ClassVar[tuple[str, ...]] = ()
    unlabelled_config_files: ClassVar[tuple[str, ...]] = ()
    # Per-module override tables its configs may hold: key -> lookup(table, module) (formats/detect.py).
    override_tables: ClassVar[dict] = {}
    # Files of a Hub repo this format reads or carries beyond its config files, the safetensors weights and
    # the model files every checkpoint has (glob patterns, for hub/fetch.py).
    hub_files: ClassVar[tuple[str, ...]] = ()
    # A tensor-name suffix only this format's producer writes, and that producer's name; the loader
    # (woqconv.runtime.worker's name) that reads whatever that producer wrote.
    marker_suffix: ClassVar[str | None] = None
    producer: ClassVar[str] = "unknown"
    producer_loader: ClassVar[str | None] = None
    # The transformers config class that parses its quantization_config (verify asks it for its verdict), and
    # the modules transformers needs to load the format, each with the woqconv extra that installs it.
    transformers_config: ClassVar[str | None] = None
    transformers_needs: ClassVar[tuple[tuple[str, str], ...]] = ()
    # What each inference engine makes of this format's checkpoints as they stand (woqconv.engines), for the
    # format names it reads that are no target's (a target declares its own): format name -> declarations.
    engine_declarations: ClassVar[dict[str, Callable]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Detection.registry.append(cls)

    @classmethod
    def claims(cls, ckpt: Checkpoint) -> bool:
        """The checkpoint is this format whatever its config says: its container, or a file only it writes."""
        return False

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> SourceFormat:
        """The format of a checkpoint this detection claims."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        """The format of a checkpoint whose quantization config (in ``file``) names one of ``quant_methods``."""
        raise NotImplementedError

    @classmethod
    def source_loader(cls, src) -> str:
        """The loader ``verify --against`` runs a source of this format in (woqconv.runtime.worker's names, or
        "dense": woqconv's own dequantized reference). By default: its producer's own loader, where one
        is registered; "dense" where the zero-point label contradicts the data (its loader would follow
        the label); else transformers."""
        fmt = src.format
        for detection in Detection.registry:
            if detection.producer_loader and fmt.producer == detection.producer:
                return detection.producer_loader
        if src.convention_source == "data" and src.declared_convention != fmt.zero_point_convention:
            return "dense"
        return "transformers"

    @classmethod
    def output_loader(cls, out) -> str | None:
        """The loader ``verify`` runs an output of this format in, where it is not the loader of the target
        of the format's name (None: that one)."""
        return None

    @classmethod
    def wrapped_modules(cls, ckpt: Checkpoint) -> list[str]:
        """Modules the producer wrapped around their linear with state of their own, which only a target that
        ``holds_wrappers`` rebuilds (INC's MulLinear)."""
        return []

    @classmethod
    def wrapper_refusal(cls, wrapped: list[str], to: str) -> str:
        """Why ``to`` cannot take a checkpoint with these wrapped modules (a format may say more)."""
        return (f"{len(wrapped)} modules ({wrapped[0]}, ...) are {cls.producer} wrappers with state of their own that {to} "
                "cannot hold")


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
    # The layout stores each zero point z itself, so the format, not the config, fixes the convention (AWQ,
    # the HPU cache, INC's non-optimum layout, OpenVINO). Otherwise the fields are z (v2) or z - 1 (v1) as
    # the config says, and symmetric data proves which (formats/zero_points.py).
    raw_zero_points: ClassVar[bool] = False
    # Format names that say the convention a checkpoint is read with (GPTQ's "gptq" and "gptq-v2"), by it.
    convention_names: ClassVar[dict[str, str]] = {}
    # Its configs may set bits / group size per layer (GPTQModel's ``dynamic``, AutoRound's ``extra_config``).
    per_layer_overrides: ClassVar[bool] = False
    # How the stored codes tensor ``<prefix>.qweight`` packs its words, (dim, slot_order) as PackedCodes
    # says it; two families with the same layout hold the same words, so a plan copies them.
    codes_layout: ClassVar[tuple[int, tuple[int, ...] | None] | None] = None
    # What check_layout says when the first layer is packed along the other axis ({name}: the format,
    # {shape}: its qweight's): a config that names the wrong one of GPTQ's and AWQ's layouts.
    other_packing_message: ClassVar[str | None] = None
    # geometry(ckpt, prefix, fmt) -> (in_features, out_features, group_size): a layer's shape from the
    # headers alone, each checked (FormatError naming the tensor). None where headers cannot tell it
    # (bitsandbytes' flat codes, ...): such a family is read with torch.
    geometry: ClassVar[Callable[[Checkpoint, str, SourceFormat], tuple[int, int, int]] | None] = None

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
    def scan(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> numpy_scan.ScannedLayer | None:
        """The layer's shell from its headers and a numpy pass over its small tensors (no torch); None where
        this family has no such pass, or the torch reader must judge the layer (it then says why)."""
        if cls.geometry is None or not numpy_scan.reads(ckpt, cls.key):
            return None
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        bits = fmt.for_layer(prefix).bits
        scan = numpy_scan.scan_layer(ckpt, prefix, bits=bits, out_features=out, groups=-(-in_features // gs), group_size=gs)
        if scan is None:
            return None
        g_idx = f"{prefix}.g_idx"
        return numpy_scan.ScannedLayer(prefix, in_features, out, bits, gs, tuple(scan.zero_counts), scan.g_idx_kind,
                                       ckpt.info(g_idx).dtype if ckpt.has(g_idx) else None, ckpt.info(f"{prefix}.scales").dtype,
                                       ckpt.info(f"{prefix}.bias").dtype if ckpt.has(f"{prefix}.bias") else None)

    @classmethod
    def check_layout(cls, ckpt: Checkpoint, fmt: SourceFormat) -> None:
        """The tensors hold the layout the config declares: some layer, and the first one shaped as this
        family packs (each layer's reader checks its own later)."""
        if cls.codebook:
            return  # codebook readers check every layer's tensors against its own quant state
        if not cls.layer_prefixes(ckpt):
            raise FormatError(f"config declares {fmt.name} but no tensor ends in .qweight", file=ckpt.root)
        first = first_layer_packing(ckpt, cls)
        if first is None or cls.codes_layout is None or cls.other_packing_message is None:
            return
        name, qw, along_out, along_in = first
        if (along_in and not along_out) if cls.codes_layout[0] == 1 else (along_out and not along_in):
            raise FormatError(cls.other_packing_message.format(name=fmt.name, shape=list(qw)), file=ckpt.file_of(name), tensor=name)

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

    # -- what every family defines --------------------------------------------------------------
    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        """One layer into the IR, validated (``codes=False``: its small tensors only, for planning)."""
        raise NotImplementedError(f"{cls.key} layers cannot be read")

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        """uint8 ``[G, out]``: the zero-point fields as the file stores them (affine families)."""
        raise NotImplementedError(f"{cls.key} stores no zero-point fields")

    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        """Why this layout cannot hold ``layer`` (a refusal), or None."""
        return None

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        """The tensors :meth:`encode` will produce for ``layer``: names, dtypes, shapes."""
        raise NotImplementedError(f"{cls.key} layers cannot be written")

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        """``layer`` as this layout's named tensors."""
        raise NotImplementedError(f"{cls.key} layers cannot be written")


def packed_source_words(ckpt: Checkpoint, name: str, bits: int, dim: int, slot_order: tuple[int, ...] | None) -> PackedCodes:
    """The codes tensor ``name`` as PackedCodes, read on first use (a plan that copies them never reads them)."""
    return PackedCodes(bits, dim, slot_order, ckpt.info(name).shape, lambda: ckpt.read(name))


def first_layer_packing(ckpt: Checkpoint, family: type[LayerFamily]) -> tuple[str, tuple, bool, bool] | None:
    """The first layer's qweight name and shape, and whether it looks packed along out (AWQ GEMM: qweight
    ``[in, out/8]``) or along in (GPTQ: ``[in/8, out]``) beside its scales; None when that cannot be told."""
    prefixes = family.layer_prefixes(ckpt)
    first = prefixes[0] if prefixes else None
    if first is None or not ckpt.has(f"{first}.scales") or not ckpt.has(f"{first}.qweight"):
        return None  # the family reader names the missing tensor
    qw, sc = ckpt.info(f"{first}.qweight").shape, ckpt.info(f"{first}.scales").shape
    if len(qw) != 2 or len(sc) != 2:
        return None
    return f"{first}.qweight", qw, qw[1] * 8 == sc[1], qw[1] == sc[1]


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


def validated(ckpt: Checkpoint, prefix: str, layer: QuantLinear, tensor_suffix: str = "qweight") -> QuantLinear:
    """Every reader's last step: the IR's own consistency check, as an error naming the layer (by its codes
    tensor, ``<prefix>.<tensor_suffix>``)."""
    problem = layer.validate()
    if problem:
        raise layer_error(ckpt, prefix, tensor_suffix, problem)
    return layer


def layer_error(ckpt: Checkpoint, prefix: str, tensor_suffix: str, problem: str) -> FormatError:
    name = f"{prefix}.{tensor_suffix}"
    file = ckpt.file_of(name) if ckpt.has(name) else ckpt.root
    return FormatError(problem, file=file, tensor=name)
