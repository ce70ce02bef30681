"""Tell which format a checkpoint is in, from its quantization config, checked against its tensors."""

from __future__ import annotations

from dataclasses import replace

from ..checkpoint import Checkpoint, read_json
from ..errors import FormatError
from . import autoround, bnb, gptq, inc, openvino
from .base import ZP_V1, ZP_V1_WORD, ZP_V2, LayerFamily, SourceFormat

GPTQ_CHECKPOINT_FORMATS = {"gptq": ZP_V1, "gptq_v2": ZP_V2}
AWQ_VERSIONS = ("gemm",)


def quantization_config(ckpt: Checkpoint) -> tuple[dict, str]:
    qc = ckpt.config.get("quantization_config")
    if isinstance(qc, dict) and qc:
        return qc, "config.json"
    for name in ("quantize_config.json", "quantization_config.json"):
        path = ckpt.root / name
        if path.exists():
            return read_json(path), name
    if not (ckpt.root / "config.json").exists():
        raise FormatError("missing config.json (and no quantize_config.json)", file=ckpt.root)
    raise FormatError("config.json has no quantization_config: not a quantized checkpoint?", file=ckpt.root / "config.json")


def _producer(qc: dict, ckpt: Checkpoint) -> str:
    meta = qc.get("meta") if isinstance(qc.get("meta"), dict) else {}
    quantizer = meta.get("quantizer")
    if quantizer:
        return ", ".join(map(str, quantizer)) if isinstance(quantizer, list) else str(quantizer)
    if qc.get("provider"):
        version = qc.get("autoround_version")
        return f"{qc['provider']} {version}" if version else str(qc["provider"])
    if qc.get("autoround_version"):
        return f"auto-round {qc['autoround_version']}"
    if any(n.endswith(".scale_bf16_to_fp8") for n in ckpt.locations):
        return "neural-compressor"
    if qc.get("quant_method") == "awq":
        return "autoawq-compatible"
    return "unknown"


def _int(qc: dict, key: str, file: str, ckpt: Checkpoint, default=None) -> int:
    value = qc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"quantization_config.{key} must be an integer, got {value!r}", file=ckpt.root / file)
    return value


def detect(ckpt: Checkpoint) -> SourceFormat:
    """Identify the checkpoint's format from its config; raise FormatError naming the problem."""
    if ckpt.container == "openvino-ir":
        return openvino.detect(ckpt)  # no quantization config: the graph's constants say it all
    inc_default = ckpt.container == "inc-pt" or (
        (ckpt.root / inc.QCONFIG).exists() and not isinstance(ckpt.config.get("quantization_config"), dict)
    )
    if ckpt.container == "hpu-cache":
        # Only INC's Gaudi cache is here; the config it was made from (qconfig.json for INC's default
        # format, config.json otherwise) still gives bits and groups, the layout is the HPU one.
        fmt = inc.detect_default(ckpt, layout_check=False) if inc_default else _detect_from_config(ckpt)
        return replace(fmt, name="hpu", family="hpu", zero_point_convention=ZP_V2, producer=inc.PRODUCER)
    fmt = inc.detect_default(ckpt) if inc_default else _detect_from_config(ckpt)
    _check_layout(ckpt, fmt)
    return fmt


def _detect_from_config(ckpt: Checkpoint) -> SourceFormat:
    qc, file = quantization_config(ckpt)
    where = ckpt.root / file
    method = str(qc.get("quant_method", "gptq" if file == "quantize_config.json" else "")).lower()
    packing_format = None
    if method == "gptq":
        ckfmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        if ckfmt not in GPTQ_CHECKPOINT_FORMATS:
            raise FormatError(f"GPTQ checkpoint_format {ckfmt!r} is not supported (supported: gptq, gptq_v2)", file=where)
        pack_dtype = qc.get("pack_dtype", "int32")
        if pack_dtype != "int32":
            raise FormatError(f"GPTQ pack_dtype {pack_dtype!r} is not supported (only int32)", file=where)
        family, convention = "gptq", GPTQ_CHECKPOINT_FORMATS[ckfmt]
        producer = _producer(qc, ckpt)
        # GPTQModel writes v1 by whole-word subtraction, so its v1 files decode by word addition.
        if convention == ZP_V1 and "gptqmodel" in producer.lower():
            convention = ZP_V1_WORD
        name = "gptq" if convention != ZP_V2 else "gptq-v2"
    elif method == "awq":
        version = str(qc.get("version") or qc.get("format") or "gemm").lower()
        if version not in AWQ_VERSIONS:
            raise FormatError(f"AWQ version {version!r} is not supported (supported: gemm)", file=where)
        family, convention, name = "awq", ZP_V2, "awq"
        producer = _producer(qc, ckpt)
    elif method in autoround.QUANT_METHODS:
        resolved = autoround.resolve(qc)
        if isinstance(resolved, str):
            raise FormatError(resolved, file=where)
        packing_format, family, convention, name = resolved
        producer = _producer(qc, ckpt)
        if producer == "unknown":
            producer = "auto-round"
    elif method == "bitsandbytes":
        return _detect_bnb(ckpt, qc, file)
    else:
        raise FormatError(f"quant_method {qc.get('quant_method')!r} is not a supported format (gptq, awq, auto-round, bitsandbytes)", file=where)

    bits = _int(qc, "bits", file, ckpt)
    group_size = _int(qc, "group_size", file, ckpt, default=-1)
    if bits not in range(2, 9):
        raise FormatError(f"bits {bits} is not supported (2..8)", file=where)
    if group_size == 0 or group_size < -1:
        raise FormatError(f"group_size {group_size} is invalid (positive, or -1 for one group per row)", file=where)
    sym = qc.get("sym")
    if method == "awq" and "zero_point" in qc:
        if isinstance(sym, bool) and sym == bool(qc["zero_point"]):
            # Every AWQ writer sets zero_point = not sym (FORMATS.md 2.3): both true, or both false, is no layout.
            raise FormatError(f"sym {sym} and zero_point {qc['zero_point']!r} contradict each other (sym means no zero point)", file=where)
        sym = not bool(qc["zero_point"])
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
    for key, lookup in (("dynamic", gptq.dynamic_override), ("extra_config", autoround.extra_config_override)):
        if qc.get(key) is not None:
            fmt = replace(fmt, layer_overrides=_layer_overrides(ckpt, fmt, key, qc[key], lookup, where))
    return fmt


def _layer_overrides(ckpt: Checkpoint, fmt: SourceFormat, key: str, table, lookup, where) -> dict[str, dict]:
    """Per-layer settings from GPTQModel's ``dynamic`` (AutoRound's GPTQ exports write it too) or AutoRound's
    ``extra_config``, resolved for every quantized layer as the producer's loader resolves them."""
    if fmt.family != "gptq":
        raise FormatError(f"per-module '{key}' overrides in a {fmt.name} checkpoint are not supported (GPTQ layout only)", file=where)
    if not isinstance(table, dict) or not all(isinstance(v, dict) or v is None for v in table.values()):
        raise FormatError(f"quantization_config.{key} must map module patterns to override objects", file=where)
    overrides = {}
    base = (fmt.bits, fmt.group_size, fmt.sym)
    for prefix in LayerFamily.registry["gptq"].layer_prefixes(ckpt):
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


def _detect_bnb(ckpt: Checkpoint, qc: dict, file: str) -> SourceFormat:
    """bitsandbytes 4-bit: the config says 4-bit and the quant type; each layer's quant_state JSON holds the
    blocksize and dtype, and the first one stands for the model in reports."""
    where = ckpt.root / file
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        raise FormatError("bitsandbytes 8-bit (LLM.int8) checkpoints are not supported; only 4-bit NF4/FP4", file=where)
    if not (qc.get("load_in_4bit") or qc.get("_load_in_4bit")):
        raise FormatError("bitsandbytes config has neither load_in_4bit nor load_in_8bit", file=where)
    declared = str(qc.get("bnb_4bit_quant_type", "fp4"))
    if declared not in bnb.QUANT_TYPES:
        raise FormatError(f"bnb_4bit_quant_type {declared!r} is not one of {', '.join(bnb.QUANT_TYPES)}", file=where)
    prefixes = bnb.BnbFamily.layer_prefixes(ckpt)
    if not prefixes:
        raise FormatError("config declares bitsandbytes 4-bit but no tensor holds a quant_state", file=ckpt.root)
    first = bnb.parse_quant_state(ckpt, prefixes[0])
    if first.quant_type != declared:
        raise FormatError(f"config declares bnb_4bit_quant_type {declared!r}, but {prefixes[0]} is {first.quant_type}", file=where)
    dq = first.nested_blocksize is not None
    return SourceFormat(
        name=f"bnb-{first.quant_type}", family=bnb.KEY, bits=4, group_size=first.blocksize, sym=None,
        zero_point_convention="none", quant_method="bitsandbytes", producer="bitsandbytes",
        declared_config={**qc, "double_quant_stored": dq}, config_file=file,
    )


def _check_layout(ckpt: Checkpoint, fmt: SourceFormat) -> None:
    """The config names a layout; the tensor shapes must agree with it."""
    if getattr(LayerFamily.registry[fmt.family], "codebook", False):
        return  # codebook readers check every layer's tensors against its own quant state
    prefixes = LayerFamily.registry[fmt.family].layer_prefixes(ckpt)
    if not prefixes:
        raise FormatError(f"config declares {fmt.name} but no tensor ends in .qweight", file=ckpt.root)
    first = prefixes[0]
    if not ckpt.has(f"{first}.scales"):
        return  # the family reader names the missing tensor
    qw, sc = ckpt.info(f"{first}.qweight").shape, ckpt.info(f"{first}.scales").shape
    if len(qw) == 2 and len(sc) == 2:
        looks_awq = qw[1] * 8 == sc[1]
        looks_gptq = qw[1] == sc[1]
        if fmt.family == "gptq" and looks_awq and not looks_gptq:
            raise FormatError(f"config declares {fmt.name} (GPTQ layout) but qweight {list(qw)} has the AWQ GEMM layout", file=ckpt.file_of(f"{first}.qweight"), tensor=f"{first}.qweight")
        if fmt.family == "awq" and looks_gptq and not looks_awq:
            raise FormatError(f"config declares AWQ but qweight {list(qw)} has the GPTQ layout", file=ckpt.file_of(f"{first}.qweight"), tensor=f"{first}.qweight")
