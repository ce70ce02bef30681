"""What ``woqconv inspect`` reports of a checkpoint, as found in its data or its headers, with the stable JSON keys.

Building a report needs no conversion machinery (the Hub's header-only inspect builds one too);
woqconv.inspection opens a local checkpoint, builds its report here, and plans the fixes it suggests."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

from .base_model import recorded_model_path
from .io.checkpoint import CONFIG_NAME, HPU_CACHES, Checkpoint
from .errors import FormatError
from .formats import TARGETS, Detection, LayerFamily
from .formats.base import SourceFormat
from .formats.detect import detect
from .ir import GIdxKind, least_regular
from .formats.scan import ScannedLayer
from .io.safetensors_io import TORCH_NAMES
from .formats.zero_points import convention_source, public_convention
from .engines import Facts, engine_table
from .source import QuantizedCheckpoint, open_checkpoint


@dataclass
class LayerInfo:
    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int
    g_idx: str  # "unknown" when only the tensor data could tell (remote inspect)
    sym: bool | None  # None: unknown without the tensor data
    scales_dtype: str
    bias: bool
    # Declared per-channel (group size -1 or 0): one group spans the layer's inputs, whatever their
    # number; ``group_size`` is then in_features, so layers of different widths differ only in it.
    per_channel: bool = False


@dataclass
class InspectReport:
    path: str
    format: str  # woqconv format name as read: gptq, gptq-v2, awq
    producer: str
    quant_method: str
    packing_format: str | None
    bits: int
    group_size: int
    sym: bool | None  # found in the data: every zero point equals 2^(bits-1); None when the data was not read
    sym_declared: bool | None
    zero_point_convention: str  # v1 (stored z-1) or v2 (stored z), as read
    zero_point_convention_declared: str
    zero_point_convention_source: str  # "data", "config", "format" (the layout defines it) or "user"
    g_idx: str  # none / trivial / block-uniform / scattered (the least regular layer); "unknown" when not read
    desc_act_declared: bool | None
    quantized_modules: int
    unquantized_tensors: int
    quantized_parameters: int
    total_bytes: int
    bits_per_weight: float  # quantized layers' bytes (codes, zeros, scales, g_idx) per weight, in bits
    scales_dtypes: list[str]
    shards: int
    layers: list[LayerInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Codebook checkpoints (bitsandbytes, INC nf4/fp4): {"quant_type", "blocksizes", "double_quant",
    # "weight_dtypes"}; None for affine ones. There, "sym" is true and the convention "none": no zero points.
    codebook: dict | None = None
    # Fields above that only the tensor data can tell, left unknown because it was not read (a remote
    # inspect reads headers only). Empty for a local inspect.
    needs_tensor_data: list[str] = field(default_factory=list)
    # The layers by precision, most populous first: [{"bits", "group_size", "sym", "layers", "names"}]. One
    # entry for a uniform checkpoint; several for mixed precision (NNCF ratio/backup, GPTQModel dynamic).
    precisions: list[dict] = field(default_factory=list)
    # The architecture: {"model_type", "architectures", "hidden_size", "num_hidden_layers"} from the
    # checkpoint's config.json or its base model's; None when neither is at hand (INC's default format).
    architecture: dict | None = None
    architecture_from: str | None = None  # "config.json", or the base model and how it was found
    model_path_recorded: str | None = None  # the original model INC recorded in qconfig.json
    # The producer's account of its compression, where the format keeps one (OpenVINO: NNCF's bitwidth
    # table, {"rows": [{"mode", "bits", "parameters", "layers", "ratio_defining_parameters",
    # "ratio_defining_layers"}], "parameters", "layers", "ratio_defining_parameters", "ratio_defining_layers"}).
    compression_table: dict | None = None
    # INC's Gaudi cache beside the weights, where there is one: {"file", "layout", "scales_dtypes",
    # "layers", "covers_every_layer"}. A cache that holds every quantized layer in the HPU layout is what
    # INC's Gaudi load reads instead of repacking.
    gaudi_cache: dict | None = None
    # Who can load the checkpoint as it stands, one row per engine woqconv knows (woqconv.engines): {"engine",
    # "label", "loads" (true / false / null: unknown without the tensor data), "detail" (how, or why not),
    # "fix" ({"to", "flags", "lossless", "note"}: the conversion after which it loads; null when none is known)}.
    engines: list[dict] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        return len(self.precisions) > 1

    def to_dict(self) -> dict:
        return asdict(self)


def precisions(layers: list[LayerInfo]) -> list[dict]:
    """Layers grouped by (bits, group size, sym), most layers first, each with its layer names. Per-channel
    layers are one group, with group size -1, however many inputs each has."""
    groups: dict[tuple, list[str]] = {}
    for layer in layers:
        groups.setdefault((layer.bits, -1 if layer.per_channel else layer.group_size, layer.sym), []).append(layer.name)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][0], kv[0][1]))
    return [{"bits": b, "group_size": g, "sym": sym, "layers": len(names), "names": names} for (b, g, sym), names in ordered]


def _totals(ckpt: Checkpoint, family: type[LayerFamily], layers: list[LayerInfo], total_bytes: int) -> dict:
    """The InspectReport fields a local and a header-only inspect compute the same way."""
    owned = {t for layer in layers for t in family.owned_tensors(ckpt, layer.name)}
    q_bytes = sum(ckpt.info(t).nbytes for t in owned if not t.endswith(".bias"))
    q_params = sum(layer.in_features * layer.out_features for layer in layers)
    return {
        "quantized_modules": len(layers),
        "unquantized_tensors": sum(1 for t in ckpt.locations if t not in owned),
        "quantized_parameters": q_params,
        "total_bytes": total_bytes,
        "bits_per_weight": round(q_bytes * 8 / q_params, 3) if q_params else 0.0,
        "scales_dtypes": sorted({layer.scales_dtype for layer in layers}),
        "shards": len(ckpt.shards),
        "precisions": precisions(layers),
    }


def report_for(src: QuantizedCheckpoint) -> InspectReport:
    layers = [_layer_info(src, layer) for layer in src.layers]
    codebook = None
    if src.is_codebook:
        codebook = {
            "quant_type": sorted({layer.quant_type for layer in src.layers}),
            "blocksizes": sorted({layer.blocksize for layer in src.layers}),
            "double_quant": any(layer.double_quant for layer in src.layers),
            "weight_dtypes": sorted({str(layer.dtype).replace("torch.", "") for layer in src.layers}),
        }
    return _local_report(src.ckpt, src.format, layers, src.warnings, src.declared_convention, src.convention_source, codebook)


def _layer_info(src: QuantizedCheckpoint, layer) -> LayerInfo:
    """What inspect lists of a layer shell: read by the torch reader, or described by the numpy scan."""
    scanned = isinstance(layer, ScannedLayer)
    return LayerInfo(
        name=layer.name,
        in_features=layer.in_features,
        out_features=layer.out_features,
        bits=layer.bits,
        group_size=layer.group_size,
        g_idx=layer.g_idx_kind.value,
        sym=layer.is_symmetric,
        scales_dtype=TORCH_NAMES[layer.scales_dtype] if scanned else str(layer.scales.dtype).replace("torch.", ""),
        bias=layer.bias_dtype is not None if scanned else layer.bias is not None,
        per_channel=src.format.for_layer(layer.name).group_size in (-1, 0),
    )


def _local_report(ckpt: Checkpoint, fmt: SourceFormat, layers: list[LayerInfo], warnings: list[str], declared: str, source: str,
                  codebook: dict | None = None) -> InspectReport:
    """The report of a checkpoint whose data was read: ``fmt`` as read, each layer's facts, the scan's warnings."""
    kind_counts = Counter(layer.g_idx for layer in layers)
    warnings = list(warnings)
    g_kind = least_regular(GIdxKind(layer.g_idx) for layer in layers).value
    if fmt.desc_act is False and g_kind in ("block-uniform", "scattered"):
        warnings.append(f"config says desc_act = false, but {kind_counts[g_kind]} layers have a {g_kind} g_idx: kernels that ignore g_idx would compute wrong weights")
    total_bytes = ckpt.weight_bytes + sum((ckpt.root / f).stat().st_size for f in ckpt.other_files)
    return InspectReport(
        path=str(ckpt.root),
        **_declared(fmt),
        sym=all(layer.sym for layer in layers),
        sym_declared=fmt.sym,
        zero_point_convention=public_convention(fmt.zero_point_convention),
        zero_point_convention_declared=public_convention(declared),
        zero_point_convention_source=source,
        g_idx=g_kind,
        desc_act_declared=fmt.desc_act,
        **_totals(ckpt, LayerFamily.registry[fmt.family], layers, total_bytes),
        layers=layers,
        warnings=warnings,
        codebook=codebook,
        compression_table=LayerFamily.registry[fmt.family].compression_table(ckpt),
        **_recorded_architecture(ckpt),
    )


def _declared(fmt: SourceFormat) -> dict:
    """The InspectReport fields the format states, the same for a local and a header-only inspect."""
    return {"format": fmt.name, "producer": fmt.producer, "quant_method": fmt.quant_method, "packing_format": fmt.packing_format,
            "bits": fmt.bits, "group_size": fmt.group_size}


def _recorded_architecture(ckpt: Checkpoint) -> dict:
    """What the checkpoint itself says of its architecture: its config.json, and INC's model_path."""
    own = (ckpt.root / CONFIG_NAME).exists()
    return {"architecture": architecture_summary(ckpt.config) if own else None, "architecture_from": CONFIG_NAME if own else None,
            "model_path_recorded": recorded_model_path(ckpt.root)}


def _from_headers(ckpt: Checkpoint, family: type[LayerFamily], fmt: SourceFormat, prefix: str) -> LayerInfo:
    """A layer as its headers describe it (checked by the family's geometry); what only its data can tell,
    symmetry and the class of a stored g_idx, is left unknown."""
    in_features, out, gs = family.geometry(ckpt, prefix, fmt)
    return LayerInfo(
        name=prefix, in_features=in_features, out_features=out, bits=fmt.for_layer(prefix).bits, group_size=gs,
        g_idx="unknown" if ckpt.has(f"{prefix}.g_idx") else "none", sym=None,
        scales_dtype=TORCH_NAMES[ckpt.info(f"{prefix}.scales").dtype], bias=ckpt.has(f"{prefix}.bias"),
        per_channel=fmt.for_layer(prefix).group_size in (-1, 0),
    )


def header_report(ckpt: Checkpoint, *, label: str, total_bytes: int) -> InspectReport:
    """The inspect report from the config and the tensor headers alone (no tensor data).

    Geometry, dtypes and sizes come from headers; symmetry, the convention the data proves, and the
    g_idx class are unknown (``needs_tensor_data``), and the convention is the declared one.
    """
    fmt = detect(ckpt)
    family = LayerFamily.registry[fmt.family]
    if getattr(family, "geometry", None) is None:
        raise FormatError(f"{fmt.name} layers cannot be described from headers alone", file=label)
    layers = [_from_headers(ckpt, family, fmt, p) for p in family.layer_prefixes(ckpt)]
    declared = public_convention(fmt.zero_point_convention)
    g_kind = "unknown" if any(layer.g_idx == "unknown" for layer in layers) else "none"
    # The layout itself fixes AWQ's raw zero points, and a layer without g_idx has none to classify.
    needs = ["sym"] + (["zero_point_convention"] if convention_source(fmt) == "config" else []) + (["g_idx"] if g_kind == "unknown" else [])
    report = InspectReport(
        path=label,
        **_declared(fmt),
        sym=None,
        sym_declared=fmt.sym,
        zero_point_convention=declared,
        zero_point_convention_declared=declared,
        zero_point_convention_source=convention_source(fmt),
        g_idx=g_kind,
        desc_act_declared=fmt.desc_act,
        **_totals(ckpt, family, layers, total_bytes),
        layers=layers,
        warnings=[],
        needs_tensor_data=needs,
        **_recorded_architecture(ckpt),
    )
    report.engines = engine_rows(report)
    return report


def gaudi_cache(src: QuantizedCheckpoint) -> dict | None:
    """INC's Gaudi cache beside ``src``'s weights, read as INC's Gaudi load reads it (None when there is none,
    or when the checkpoint is only that cache)."""
    if src.ckpt.container == "hpu-cache":
        return None
    files = [name for name in HPU_CACHES if (src.root / name).exists()]
    if not files:
        return None
    with open_checkpoint(src.root, hpu_cache=True) as cache:
        dtypes = sorted({str(layer.scales.dtype).removeprefix("torch.") for layer in cache.layers})
        covers = set(cache.layer_names) >= set(src.layer_names)
        return {"file": files[0], "layout": cache.format.family, "scales_dtypes": dtypes, "layers": len(cache.layer_names),
                "covers_every_layer": covers}


def architecture_summary(config: dict) -> dict:
    keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers")
    return {k: config.get(k) for k in keys}


def engine_facts(report: InspectReport) -> Facts:
    """What the engines' declarations ask of a checkpoint, from its report."""
    layers = report.layers
    syms = [layer.sym for layer in layers]
    cache = report.gaudi_cache
    return Facts(
        format=report.format, quant_method=report.quant_method, bits=frozenset(layer.bits for layer in layers),
        asym=None if any(s is None for s in syms) else not all(syms), g_idx=report.g_idx, mixed=report.mixed,
        dims_multiple_of_32=all(layer.in_features % 32 == 0 and layer.out_features % 32 == 0 for layer in layers),
        has_architecture=report.architecture is not None, gaudi_cache=bool(cache and cache["covers_every_layer"]),
        scales_dtypes=tuple(report.scales_dtypes), declared_bits=report.bits, declared_group_size=report.group_size,
        desc_act=report.desc_act_declared,
    )


def engine_rows(report: InspectReport, try_conversion: Callable[[str], dict | None] | None = None) -> list[dict]:
    """Who loads the checkpoint as it stands, and, with ``try_conversion`` (``name -> {"flags", "lossless",
    "note"}`` or None; woqconv.inspection plans each on the open source), what fixes it for the others."""
    detection = next((d for d in Detection.registry if report.format in d.engine_declarations), None)
    declare = detection.engine_declarations[report.format] if detection else getattr(TARGETS.get(report.format), "engines", None)
    rows = engine_table(engine_facts(report), declare, TARGETS, try_conversion)
    return [asdict(row) for row in rows]
