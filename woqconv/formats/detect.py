"""Tell which format a checkpoint is in, from its container or quantization config, checked against its tensors.

Formats recognise their own checkpoints (``Detection`` subclasses in their modules, formats/base.py): some
by their container or a file only they write, the others by ``quantization_config.quant_method``. This
module asks them in order and holds what every affine format's config shares: bits, group size,
symmetry, and per-layer overrides.
"""

from __future__ import annotations

from dataclasses import replace

from ..io.checkpoint import Checkpoint, read_json
from ..errors import FormatError
from .base import Detection, LayerFamily, SourceFormat


def detect(ckpt: Checkpoint) -> SourceFormat:
    """Identify the checkpoint's format; raise FormatError naming the problem."""
    for detection in Detection.registry:
        if detection.claims(ckpt):
            return replace(detection.detect(ckpt), detection=detection)
    fmt = from_config(ckpt)
    check_layout(ckpt, fmt)
    return fmt


def from_config(ckpt: Checkpoint) -> SourceFormat:
    """The format its quantization config names, through the detection that reads that ``quant_method``."""
    qc, file = quantization_config(ckpt)
    method = str(qc.get("quant_method", "")).lower()
    if not method:
        method = next((d.quant_methods[0] for d in Detection.registry if file in d.unlabelled_config_files), "")
    for detection in Detection.registry:
        if method in detection.quant_methods:
            return replace(detection.from_config(ckpt, qc, file, method), detection=detection)
    known = ", ".join(d.quant_methods[0] for d in Detection.registry if d.quant_methods)
    raise FormatError(f"quant_method {qc.get('quant_method')!r} is not a supported format ({known})", file=ckpt.root / file)


def quantization_config(ckpt: Checkpoint) -> tuple[dict, str]:
    """config.json's quantization_config, else the first separate config file a format writes."""
    qc = ckpt.config.get("quantization_config")
    if isinstance(qc, dict) and qc:
        return qc, "config.json"
    names = dict.fromkeys(name for d in Detection.registry for name in d.config_files)
    for name in names:
        path = ckpt.root / name
        if path.exists():
            return read_json(path), name
    if not (ckpt.root / "config.json").exists():
        raise FormatError(f"missing config.json (and no {' or '.join(names)})", file=ckpt.root)
    raise FormatError("config.json has no quantization_config: not a quantized checkpoint?", file=ckpt.root / "config.json")


def producer(qc: dict, ckpt: Checkpoint) -> str:
    """Who wrote the checkpoint: the config's own record (``meta.quantizer``, ``provider``, AutoRound's version),
    else a tensor only one producer writes, else "unknown"."""
    meta = qc.get("meta") if isinstance(qc.get("meta"), dict) else {}
    quantizer = meta.get("quantizer")
    if quantizer:
        return ", ".join(map(str, quantizer)) if isinstance(quantizer, list) else str(quantizer)
    if qc.get("provider"):
        version = qc.get("autoround_version")
        return f"{qc['provider']} {version}" if version else str(qc["provider"])
    if qc.get("autoround_version"):
        return f"auto-round {qc['autoround_version']}"
    for detection in Detection.registry:
        if detection.marker_suffix and any(n.endswith(detection.marker_suffix) for n in ckpt.locations):
            return detection.producer
    return "unknown"


def config_choice(qc: dict, keys: tuple[str, ...], default: str, allowed, what: str, where) -> str:
    """The first of ``keys`` the config sets (lower-cased), else ``default``; one of ``allowed`` or a FormatError."""
    value = str(next((qc[k] for k in keys if qc.get(k)), default)).lower()
    if value not in allowed:
        raise FormatError(f"{what} {value!r} is not supported (supported: {', '.join(allowed)})", file=where)
    return value


def config_int(qc: dict, key: str, file: str, ckpt: Checkpoint, default=None) -> int:
    value = qc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"quantization_config.{key} must be an integer, got {value!r}", file=ckpt.root / file)
    return value


def affine_format(ckpt: Checkpoint, qc: dict, file: str, *, name: str, family: str, convention: str, method: str, producer: str,
                  packing_format: str | None = None, sym: bool | None = None) -> SourceFormat:
    """The SourceFormat of an integer affine checkpoint: bits and group size checked, per-layer overrides
    resolved. ``sym``: what the config says, where a format spells it its own way (else ``qc["sym"]``)."""
    where = ckpt.root / file
    bits = config_int(qc, "bits", file, ckpt)
    group_size = config_int(qc, "group_size", file, ckpt, default=-1)
    if bits not in range(2, 9):
        raise FormatError(f"bits {bits} is not supported (2..8)", file=where)
    if group_size == 0 or group_size < -1:
        raise FormatError(f"group_size {group_size} is invalid (positive, or -1 for one group per row)", file=where)
    sym = qc.get("sym") if sym is None else sym
    fmt = SourceFormat(
        name=name,
        family=family,
        bits=bits,
        group_size=group_size,
        sym=sym if isinstance(sym, bool) else None,
        zero_point_convention=convention,
        quant_method=method,
        producer=producer,
        packing_format=packing_format,
        desc_act=qc.get("desc_act") if isinstance(qc.get("desc_act"), bool) else None,
        declared_config=qc,
        config_file=file,
    )
    for detection in Detection.registry:
        for key, lookup in detection.override_tables.items():
            if qc.get(key) is not None:
                fmt = replace(fmt, layer_overrides=_layer_overrides(ckpt, fmt, key, qc[key], lookup, where))
    return fmt


def _layer_overrides(ckpt: Checkpoint, fmt: SourceFormat, key: str, table, lookup, where) -> dict[str, dict]:
    """Per-layer settings from a per-module table (GPTQModel's ``dynamic``, AutoRound's ``extra_config``),
    resolved for every quantized layer as the producer's loader resolves them."""
    family = LayerFamily.registry[fmt.family]
    if not family.per_layer_overrides:
        holders = ", ".join(k for k, f in LayerFamily.registry.items() if f.per_layer_overrides)
        raise FormatError(f"per-module '{key}' overrides in a {fmt.name} checkpoint are not supported ({holders} layout only)", file=where)
    if not isinstance(table, dict) or not all(isinstance(v, dict) or v is None for v in table.values()):
        raise FormatError(f"quantization_config.{key} must map module patterns to override objects", file=where)
    overrides = {}
    base = (fmt.bits, fmt.group_size, fmt.sym)
    for prefix in family.layer_prefixes(ckpt):
        try:
            o = lookup(table, prefix)
        except ValueError as e:
            raise FormatError(str(e), file=where) from None
        if o is False:
            raise FormatError(f"{key} excludes {prefix} from quantization, but it holds {prefix}.qweight", file=where)
        if not o:
            continue
        bits, gs, sym = o.get("bits", base[0]), o.get("group_size", base[1]), o.get("sym", base[2])
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in range(2, 9):
            raise FormatError(f"{key} gives {prefix} bits {bits!r} (supported: 2..8)", file=where)
        if not isinstance(gs, int) or isinstance(gs, bool) or gs == 0 or gs < -1:
            raise FormatError(f"{key} gives {prefix} group_size {gs!r} (positive, or -1 for one group per row)", file=where)
        if (bits, gs, sym) != base:
            overrides[prefix] = {"bits": bits, "group_size": gs, "sym": sym if isinstance(sym, bool) else None}
    return overrides


def check_layout(ckpt: Checkpoint, fmt: SourceFormat) -> None:
    """The config names a layout; the tensors must hold it (the family's own check)."""
    LayerFamily.registry[fmt.family].check_layout(ckpt, fmt)
