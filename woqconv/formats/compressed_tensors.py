"""compressed-tensors ``pack-quantized`` (llm-compressor's W4A16 / W8A16, AutoRound's ``llm_compressor`` export,
compressed-tensors' own AutoAWQ converter): integer weights, symmetric or asymmetric, per group or per channel.

Per quantized linear (compressed-tensors 0.20, ``compressors/pack_quantized``):
  weight_packed      int32 [out, ceil(in*b/32)]  codes along in_features, one dense LSB-first bit stream per row
                                                   (fields straddle words at 3/5/6/7 bits), padded with zero bits
  weight_scale       float [out, G]              G = ceil(in/group_size); 1 for the channel strategy
  weight_zero_point  int32 [ceil(out*b/32), G]   asymmetric only: zero points packed along out_features
  weight_shape       int64 [2]                   [out, in]
  weight_g_idx       int32 [in]                  only from releases before 0.19 (``actorder: group``)
  bias               float [out]                 where the linear has one, untouched
compressed-tensors stores signed integers ``q_s`` as ``q_s + 2^(b-1)``, for codes and zero points alike, so
the stored fields are the IR's unsigned ``q`` and ``z`` themselves: ``(q_s - z_s) * s == (q - z) * s``. A
symmetric layer stores no zero points; its ``z`` is ``2^(b-1)``.

Which scheme applies to a layer is compressed-tensors' rule (``quantization/lifecycle/apply.py``,
``utils/match.py``): the targets of every config group, tried exact names first, then ``re:`` patterns (matched
from the start of the name), then class names; ``ignore`` wins over all.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..kernels import packing
from .._lazy import torch
from ..errors import FormatError
from ..io.checkpoint import Checkpoint
from ..ir import GIdxKind, PackedCodes, QuantLinear
from ..io.safetensors_io import TensorSpec
from ..tensor_ops import Copy, RowwiseToGptq, ShiftFields, Small, TensorOp, Transposed, ZerosToRowwise
from .base import ZP_V1, ZP_V2, Detection, LayerFamily, SourceFormat, expect_dtype, layer_error, require, spec_of, validated
from .gptq import SCALE_DTYPES
from ..engines import Verdict, bits_label, loads, needs_symmetry, refuses, vllm_cpu_kernel
from .targets import ByteRoute, LoadExample, ModelQuantSummary, Target, with_bias, zero_point_delta
from . import detect

KEY = "compressed-tensors"
QUANT_METHOD = "compressed-tensors"
PACKED = "pack-quantized"
# The release whose layout and config schema the target writes (its dense bit stream is 0.19's and later;
# at 2, 4 and 8 bits every release packs the same words).
SCHEMA_VERSION = "0.20.1"
STRATEGIES = ("group", "channel")
# A module whose class is one of these is what a class-name target can mean for a layer that stores weight_packed.
LINEAR_CLASSES = ("Linear",)


def offset(bits: int) -> int:
    """What compressed-tensors adds to a signed value to store it (and the implied symmetric zero point)."""
    return 1 << (bits - 1)


def packed_words(count: int, bits: int) -> int:
    """int32 words holding ``count`` fields of ``bits`` bits in one dense stream."""
    return -(-count * bits // 32)


# -- which scheme a layer has ---------------------------------------------------------------------------

def _is_regex(target: str) -> bool:
    return target.startswith("re:")


def _name_matches(name: str, target: str) -> bool:
    return re.match(target[3:], name) is not None if _is_regex(target) else target == name


def _class_matches(target: str) -> bool:
    return not _is_regex(target) and target in LINEAR_CLASSES


def scheme_of(name: str, groups: dict[str, dict], ignore: list[str]) -> str | None:
    """The config group that quantizes module ``name``, as compressed-tensors picks it: of the targets that match,
    exact names first, then regexes, then class names (sorted within each kind, a later group's copy of the same
    target replacing an earlier one's); None when none does, or ``ignore`` names it."""
    if any(_name_matches(name, t) or _class_matches(t) for t in ignore):
        return None
    owner: dict[str, str] = {}
    for group, scheme in groups.items():
        for target in scheme.get("targets") or []:
            owner[target] = group
    ordered = sorted(owner, key=lambda t: (_is_regex(t), t))
    by_name = [t for t in ordered if _name_matches(name, t)]
    by_class = [t for t in ordered if _class_matches(t) and t not in by_name]
    matched = by_name + by_class
    return owner[matched[0]] if matched else None


# -- reading -----------------------------------------------------------------------------------------

class CompressedTensorsFamily(LayerFamily, key=KEY):
    suffixes = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "bias")
    raw_zero_points = True
    per_layer_overrides = True
    encodes_packed = True

    @classmethod
    def layer_prefixes(cls, ckpt: Checkpoint) -> list[str]:
        return sorted(n[: -len(".weight_packed")] for n in ckpt.locations if n.endswith(".weight_packed"))

    @classmethod
    def check_layout(cls, ckpt: Checkpoint, fmt: SourceFormat) -> None:
        if not cls.layer_prefixes(ckpt):
            raise FormatError("config declares compressed-tensors pack-quantized but no tensor ends in .weight_packed", file=ckpt.root)

    @classmethod
    def geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
        fmt = fmt.for_layer(prefix)
        for suffix in ("weight_packed", "weight_scale", "weight_shape"):
            require(ckpt, f"{prefix}.{suffix}", suffix)
        expect_dtype(ckpt, f"{prefix}.weight_packed", ("I32",))
        expect_dtype(ckpt, f"{prefix}.weight_scale", SCALE_DTYPES)
        expect_dtype(ckpt, f"{prefix}.weight_shape", ("I64", "I32"))
        b = fmt.bits
        shape = ckpt.info(f"{prefix}.weight_shape").shape
        if shape != (2,):
            raise layer_error(ckpt, prefix, "weight_shape", f"shape {list(shape)}, expected [2] ([out, in])")
        raw = ckpt.read_bytes(f"{prefix}.weight_shape")
        out, in_features = (int(v) for v in raw.view("<i8" if ckpt.info(f"{prefix}.weight_shape").dtype == "I64" else "<i4"))
        if out <= 0 or in_features <= 0:
            raise layer_error(ckpt, prefix, "weight_shape", f"[{out}, {in_features}] is no weight shape")
        words = ckpt.info(f"{prefix}.weight_packed").shape
        if words != (out, packed_words(in_features, b)):
            legacy = (out, -(-in_features // (32 // b)))
            why = (" (compressed-tensors before 0.19 packed whole fields per word; that layout is not read)"
                   if words == legacy and 32 % b else "")
            raise layer_error(ckpt, prefix, "weight_packed",
                              f"shape {list(words)}, expected {[out, packed_words(in_features, b)]} for {b}-bit codes of a "
                              f"[{out}, {in_features}] weight{why}")
        gs = in_features if fmt.group_size == -1 else fmt.group_size
        groups = -(-in_features // gs)
        scales = ckpt.info(f"{prefix}.weight_scale").shape
        if scales != (out, groups):
            raise layer_error(ckpt, prefix, "weight_scale", f"shape {list(scales)}, expected {[out, groups]} "
                              f"({'one per row' if groups == 1 else f'group_size {gs}'})")
        zp = f"{prefix}.weight_zero_point"
        if fmt.sym and ckpt.has(zp):
            raise layer_error(ckpt, prefix, "weight_zero_point", "the layer's scheme is symmetric, yet it stores zero points")
        if not fmt.sym:
            require(ckpt, zp, "weight_zero_point")
            expect_dtype(ckpt, zp, ("I32",))
            if ckpt.info(zp).shape != (packed_words(out, b), groups):
                raise layer_error(ckpt, prefix, "weight_zero_point",
                                  f"shape {list(ckpt.info(zp).shape)}, expected {[packed_words(out, b), groups]}")
        g_idx = f"{prefix}.weight_g_idx"
        if ckpt.has(g_idx):
            expect_dtype(ckpt, g_idx, ("I32", "I64"))
            if ckpt.info(g_idx).shape != (in_features,):
                raise layer_error(ckpt, prefix, "weight_g_idx", f"shape {list(ckpt.info(g_idx).shape)}, expected [{in_features}]")
        return in_features, out, gs

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        b = fmt.for_layer(prefix).bits
        if fmt.for_layer(prefix).sym:
            return torch.full((-(-in_features // gs), out), offset(b), dtype=torch.uint8)
        return packing.unpack_padded(ckpt.read(f"{prefix}.weight_zero_point").T.contiguous(), b, out)

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        zeros = cls.stored_zero_fields(ckpt, prefix, fmt).T.contiguous()
        g_idx = f"{prefix}.weight_g_idx"
        layer = QuantLinear(
            name=prefix,
            in_features=in_features,
            out_features=out,
            bits=fmt.for_layer(prefix).bits,
            group_size=gs,
            zeros=zeros,
            scales=ckpt.read(f"{prefix}.weight_scale"),
            g_idx=ckpt.read(g_idx).to(torch.int32) if ckpt.has(g_idx) else None,
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            layer.codes = packing.unpack_padded(ckpt.read(f"{prefix}.weight_packed"), layer.bits, in_features)
        return validated(ckpt, prefix, layer, tensor_suffix="weight_packed")

    @classmethod
    def packed_codes(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> PackedCodes | None:
        """Rows of whole words are GPTQ's words transposed: the same stream along in_features."""
        in_features, out, _ = cls.geometry(ckpt, prefix, fmt)
        b = fmt.for_layer(prefix).bits
        if in_features * b % 32:
            return None
        name = f"{prefix}.weight_packed"
        return PackedCodes(b, 0, None, (in_features * b // 32, out), lambda: ckpt.read(name).T.contiguous())

    # -- writing ---------------------------------------------------------------------------------------
    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        return None  # any shape packs (the stream is padded), 1..8 bits

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        p, b, out = layer.name, layer.bits, layer.out_features
        specs = [
            TensorSpec(f"{p}.weight_packed", "I32", (out, packed_words(layer.in_features, b))),
            spec_of(f"{p}.weight_scale", layer.scales),
            TensorSpec(f"{p}.weight_shape", "I64", (2,)),
        ]
        if not layer.is_symmetric:
            specs.append(TensorSpec(f"{p}.weight_zero_point", "I32", (packed_words(out, b), layer.num_groups)))
        if layer.bias is not None:
            specs.append(spec_of(f"{p}.bias", layer.bias))
        return specs

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        if layer.g_idx is not None:
            raise ValueError(f"{layer.name}: compressed-tensors stores no g_idx; relabel groups before encoding")
        p, b = layer.name, layer.bits
        if layer.in_features * b % 32 == 0:
            words = layer.pack_codes(dim=0)  # GPTQ's words [in*b/32, out]: the rows' streams, transposed
            codes = (words.words if isinstance(words, PackedCodes) else words).T.contiguous()
        else:
            unpacked = layer.codes if layer.codes is not None else layer.packed.unpack()
            codes = packing.pack_padded(unpacked, b)
        tensors = {
            f"{p}.weight_packed": codes,
            f"{p}.weight_scale": layer.scales.contiguous(),
            f"{p}.weight_shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64),
        }
        if not layer.is_symmetric:
            tensors[f"{p}.weight_zero_point"] = packing.pack_padded(layer.zeros.T, b).T.contiguous()
        if layer.bias is not None:
            tensors[f"{p}.bias"] = layer.bias
        return tensors


# -- detection ---------------------------------------------------------------------------------------

def _scheme_settings(name: str, scheme: dict, where) -> dict:
    """A config group's weight settings as woqconv's per-layer precision ({"bits", "group_size", "sym"}), or a
    FormatError saying why woqconv cannot read what it describes."""
    if scheme.get("input_activations") or scheme.get("output_activations"):
        raise FormatError(f"config group {name!r} quantizes activations too: woqconv converts weight-only checkpoints", file=where)
    w = scheme.get("weights")
    if not isinstance(w, dict):
        raise FormatError(f"config group {name!r} has no weights scheme", file=where)
    if w.get("type", "int") != "int":
        raise FormatError(f"config group {name!r}: weights of type {w.get('type')!r} are not supported (int only)", file=where)
    bits = w.get("num_bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in range(2, 9):
        raise FormatError(f"config group {name!r}: num_bits {bits!r} is not supported (2..8)", file=where)
    strategy = w.get("strategy")
    if strategy not in STRATEGIES:
        raise FormatError(f"config group {name!r}: strategy {strategy!r} is not supported ({', '.join(STRATEGIES)})", file=where)
    if w.get("dynamic"):
        raise FormatError(f"config group {name!r}: dynamic weight quantization stores no integers", file=where)
    gs = w.get("group_size") if strategy == "group" else -1
    if strategy == "group" and (not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0):
        raise FormatError(f"config group {name!r}: group strategy with group_size {gs!r}", file=where)
    if not isinstance(w.get("symmetric", True), bool):
        raise FormatError(f"config group {name!r}: symmetric must be true or false, got {w.get('symmetric')!r}", file=where)
    fmt = scheme.get("format")
    if fmt not in (None, PACKED):
        raise FormatError(f"config group {name!r} is stored as {fmt!r}: only {PACKED} is supported", file=where)
    return {"bits": bits, "group_size": gs, "sym": w.get("symmetric", True)}


class CompressedTensorsDetection(Detection):
    """``quant_method: compressed-tensors`` with weight-only integer groups stored ``pack-quantized``."""

    quant_methods = (QUANT_METHOD,)
    # llm-compressor saves the recipe it ran beside the weights.
    hub_files = ("recipe.yaml",)
    transformers_config = "CompressedTensorsConfig"
    transformers_needs = (("compressed_tensors", "verify"),)

    # transformers + compressed-tensors 0.20 load symmetric checkpoints on CPU and fail on asymmetric ones ("You set
    # ignore_mismatched_sizes to False, thus raising an error": the packed zero points' shape); either way
    # compressed-tensors decompresses into the scales' dtype, so its weights are rounded to fp16/bf16.
    @classmethod
    def output_loader(cls, out) -> str | None:
        """vLLM, which serves every one of them (``--loader transformers`` runs a symmetric one there)."""
        return "vllm"

    @classmethod
    def source_loader(cls, src) -> str:
        """woqconv's dequantization in fp32: no real loader here computes a compressed-tensors source's weights
        unrounded."""
        return "dense"

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        where = ckpt.root / file
        status = qc.get("quantization_status", "compressed")
        if status != "compressed":
            raise FormatError(f"quantization_status {status!r}: the weights are not stored compressed (pack-quantized integers)", file=where)
        top = qc.get("format")
        if top not in (None, PACKED, "mixed-precision"):
            raise FormatError(f"compressed-tensors format {top!r} is not supported (only {PACKED})", file=where)
        sparsity = qc.get("sparsity_config") or {}
        if sparsity.get("format") not in (None, "dense"):
            raise FormatError(f"sparsity compression {sparsity.get('format')!r} is not supported (dense weights only)", file=where)
        if qc.get("transform_config"):
            raise FormatError("transforms (rotations) are applied at load: the stored weights alone are not the model", file=where)
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups or not all(isinstance(g, dict) for g in groups.values()):
            raise FormatError("config_groups must map group names to schemes", file=where)
        settings = {name: _scheme_settings(name, scheme, where) for name, scheme in groups.items()}
        ignore = [str(t) for t in qc.get("ignore") or []]
        per_layer = {}
        for prefix in CompressedTensorsFamily.layer_prefixes(ckpt):
            group = scheme_of(prefix, groups, ignore)
            if group is None:
                raise FormatError(f"{prefix} stores weight_packed, but no config group targets it (or ignore names it)", file=where)
            per_layer[prefix] = settings[group]
        if not per_layer:
            raise FormatError("config declares compressed-tensors pack-quantized but no tensor ends in .weight_packed", file=ckpt.root)
        common = Counter(tuple(s.values()) for s in per_layer.values()).most_common(1)[0][0]
        bits, group_size, sym = common
        overrides = {p: s for p, s in per_layer.items() if tuple(s.values()) != common}
        actorders = {str((g.get("weights") or {}).get("actorder")) for g in groups.values()}
        producer = detect.producer(qc, ckpt)
        if producer == "unknown":
            producer = "llm-compressor" if (ckpt.root / "recipe.yaml").exists() else f"compressed-tensors {qc.get('version', '')}".strip()
        return SourceFormat(name=KEY, family=KEY, bits=bits, group_size=group_size, sym=sym, zero_point_convention=ZP_V2,
                            quant_method=method, producer=producer, packing_format=PACKED, desc_act="group" in actorders,
                            declared_config=qc, config_file=file, layer_overrides=overrides)


# -- target ------------------------------------------------------------------------------------------

def _weights(bits: int, group_size: int, sym: bool) -> dict:
    """One config group's ``weights``, every field as compressed-tensors' QuantizationArgs writes it."""
    return {"num_bits": bits, "type": "int", "symmetric": sym, "group_size": group_size if group_size > 0 else None,
            "strategy": "group" if group_size > 0 else "channel", "block_structure": None, "dynamic": False, "actorder": None,
            "scale_dtype": None, "zp_dtype": None, "observer": None, "observer_kwargs": {}}


def compressed_tensors_engines(facts) -> dict:
    """compressed-tensors pack-quantized as each engine reads it: vLLM 0.32's WNA16 scheme parses 2-8 bits, sym
    (uint4b8 ...) or asym (uint4 ...); its CUDA kernels (Marlin, Machete) are measured elsewhere for 4 and 8
    bits; transformers decompresses on load and fails on asymmetric checkpoints (compressed-tensors 0.20)."""
    bits = bits_label(facts)
    cuda = loads() if facts.bits <= {4, 8} else Verdict(None, f"vLLM parses {bits}; whether a CUDA kernel takes it is unmeasured")
    return {
        "transformers": needs_symmetry(facts, lambda: loads("with compressed-tensors (decompressed to dense on load)"),
                                       "transformers + compressed-tensors 0.20 fail on asymmetric checkpoints: `You set "
                                       "ignore_mismatched_sizes to False, thus raising an error`"),
        "vllm-cpu": vllm_cpu_kernel(facts, loads()),
        "vllm-cuda": cuda,
        "vllm-gaudi": loads("W4A16") if facts.bits == {4} else refuses(f"vllm-gaudi reads compressed-tensors W4A16 only, not {bits}"),
    }


class CompressedTensorsTarget(Target):
    name = KEY
    family = CompressedTensorsFamily
    engines = staticmethod(compressed_tensors_engines)
    zero_point_convention = ZP_V2
    keeps_g_idx = False
    per_layer_precision = True
    description = "compressed-tensors pack-quantized (llm-compressor; vLLM, transformers): 2-8 bits, sym or asym, no g_idx"
    loader = "vllm"
    load_examples = (
        LoadExample("With vLLM:", 'from vllm import LLM\n\nllm = LLM("{repo}")'),
        LoadExample("With transformers (compressed-tensors decompresses on load):",
                    'from transformers import AutoModelForCausalLM{tokenizer_import}\n\n'
                    'model = AutoModelForCausalLM.from_pretrained("{repo}"){tokenizer}'),
    )

    def byte_route(self, layer, source_family, source_convention):
        """4-bit GPTQ (v1 or v2 fields) and AWQ GEMM layers with contiguous groups, by moving bytes: compressed-tensors'
        code words are GPTQ's transposed (AWQ's are re-laid out as GPTQ's first), its zero-point words GPTQ's qzeros
        transposed (v1 fields shifted, AWQ's nibbles put in order), its scales GPTQ's and AWQ's transposed."""
        if (layer.bits != 4 or layer.in_features % 8 or layer.out_features % 8
                or layer.g_idx_kind not in (GIdxKind.NONE, GIdxKind.TRIVIAL)):
            return None
        p, g, out, inf = layer.name, layer.num_groups, layer.out_features, layer.in_features
        if source_family == "gptq" and source_convention in (ZP_V1, ZP_V2):
            codes: TensorOp = Transposed(Copy(f"{p}.qweight"))
            delta = zero_point_delta(source_convention, ZP_V2)
            zeros: TensorOp = Transposed(ShiftFields(f"{p}.qzeros", 4, delta) if delta else Copy(f"{p}.qzeros"))
        elif source_family == "awq":
            codes = Transposed(RowwiseToGptq(f"{p}.qweight", packing.AWQ_ORDER))
            zeros = Transposed(ZerosToRowwise(f"{p}.qzeros", g, out, 0, packing.AWQ_REVERSE_ORDER))
        else:
            return None
        specs = [TensorSpec(f"{p}.weight_packed", "I32", (out, inf // 8)), TensorSpec(f"{p}.weight_scale", layer.scales_dtype, (out, g)),
                 TensorSpec(f"{p}.weight_shape", "I64", (2,))]
        ops: dict[str, TensorOp] = {f"{p}.weight_packed": codes, f"{p}.weight_scale": Transposed(Copy(f"{p}.scales")),
                                    f"{p}.weight_shape": Small(np.array([out, inf], dtype=np.int64))}
        if not layer.is_symmetric:
            specs.append(TensorSpec(f"{p}.weight_zero_point", "I32", (out // 8, g)))
            ops[f"{p}.weight_zero_point"] = zeros
        changes = ["trivial g_idx dropped"] if layer.g_idx_kind is GIdxKind.TRIVIAL else []
        return ByteRoute(*with_bias(layer, specs, ops), changes)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        by_scheme: dict[tuple[int, int, bool], list[str]] = {}
        declared = summary.group_size
        for layer in summary.layers:
            # The model's group size where the layer has it (a row shorter than a group is one group, as
            # llm-compressor writes it), else the layer's own; one group per row is the channel strategy.
            if declared > 0 and layer.group_size == min(declared, layer.in_features):
                gs = declared
            else:
                gs = layer.group_size if layer.group_size < layer.in_features else -1
            by_scheme.setdefault((layer.bits, gs, bool(layer.is_symmetric)), []).append(layer.name)
        groups = {}
        for k, ((bits, gs, sym), names) in enumerate(sorted(by_scheme.items(), key=lambda kv: -len(kv[1]))):
            # One scheme: every linear woqconv quantized (the others are ignored). More: each names its layers.
            targets = ["Linear"] if len(by_scheme) == 1 else sorted(names)
            groups[f"group_{k}"] = {"targets": targets, "weights": _weights(bits, gs, sym), "input_activations": None,
                                    "output_activations": None, "format": PACKED}
        return {
            "quant_method": QUANT_METHOD,
            "format": PACKED,
            "quantization_status": "compressed",
            "config_groups": groups,
            "ignore": sorted(summary.unquantized_linears),
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
            "sparsity_config": {},
            "transform_config": {},
            "version": SCHEMA_VERSION,
        }
