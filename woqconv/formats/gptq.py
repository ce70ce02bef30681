"""GPTQ layout (AutoGPTQ / GPTQModel / optimum / INC's optimum format), v1 and v2 zero points.

Per quantized linear (FORMATS.md 1.1-1.7):
  qweight int32 [in*b/32, out]  codes packed along in_features, LSB-first bit stream
  qzeros  int32 [G, out*b/32]   zero points packed along out_features; v1 stores z-1, v2 stores z
  scales  float [G, out]
  g_idx   int32 [in]            optional group of each input channel (act-order)
  bias    float [out]           optional
"""

from __future__ import annotations

import re

from ..kernels import packing
from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..ir import PackedCodes, QuantLinear, default_g_idx
from ..io.safetensors_io import TensorSpec
from ..engines import Verdict, bits_label, gaudi_verdict, loads, needs_symmetry, refuses, vllm_cpu_kernel, vllm_reads_its_config
from .targets import TRANSFORMERS_LOAD, ModelQuantSummary, Target, gptq_layout_route, neural_compressor_load
from ..errors import FormatError
from . import detect
from .base import (
    ZP_V1,
    ZP_V1_WORD,
    ZP_V2,
    Detection,
    LayerFamily,
    SourceFormat,
    effective_group_size,
    expect_dtype,
    packed_source_words,
    layer_error,
    require,
    spec_of,
    validated,
)

SCALE_DTYPES = ("F16", "BF16", "F32")


class GptqFamily(LayerFamily, key="gptq"):
    suffixes = ("qweight", "qzeros", "scales", "g_idx", "bias")
    convention_names = {ZP_V1: "gptq", ZP_V2: "gptq-v2"}
    encodes_packed = True
    per_layer_overrides = True
    codes_layout = (0, None)
    other_packing_message = "config declares {name} (GPTQ layout) but qweight {shape} has the AWQ GEMM layout"

    @classmethod
    def geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
        fmt = fmt.for_layer(prefix)
        for suffix, what in (("qweight", "qweight"), ("qzeros", "qzeros"), ("scales", "scales")):
            require(ckpt, f"{prefix}.{suffix}", what)
        expect_dtype(ckpt, f"{prefix}.qweight", ("I32",))
        expect_dtype(ckpt, f"{prefix}.qzeros", ("I32",))
        expect_dtype(ckpt, f"{prefix}.scales", SCALE_DTYPES)
        b = fmt.bits
        qw = ckpt.info(f"{prefix}.qweight").shape
        qz = ckpt.info(f"{prefix}.qzeros").shape
        sc = ckpt.info(f"{prefix}.scales").shape
        if len(qw) != 2 or len(qz) != 2 or len(sc) != 2:
            raise layer_error(ckpt, prefix, "qweight", f"expected 2-D qweight/qzeros/scales, got {list(qw)}, {list(qz)}, {list(sc)}")
        groups, out = sc
        if qw[1] != out:
            hint = " (that is the AWQ GEMM layout)" if qw[1] * 8 == out else ""
            raise layer_error(ckpt, prefix, "qweight", f"shape {list(qw)} does not match scales {list(sc)} in the GPTQ layout{hint}")
        if (qw[0] * 32) % b:
            raise layer_error(ckpt, prefix, "qweight", f"{qw[0]} packed rows cannot hold whole {b}-bit codes")
        in_features = qw[0] * 32 // b
        if qz != (groups, out * b // 32) or (out * b) % 32:
            raise layer_error(ckpt, prefix, "qzeros", f"shape {list(qz)} disagrees with {b}-bit zero points for scales {list(sc)}")
        gs = effective_group_size(fmt.group_size, in_features)
        if -(-in_features // gs) != groups:
            raise layer_error(
                ckpt, prefix, "scales",
                f"{groups} groups, but in_features {in_features} with group_size {fmt.group_size} gives {-(-in_features // gs)}",
            )
        if ckpt.has(f"{prefix}.g_idx"):
            expect_dtype(ckpt, f"{prefix}.g_idx", ("I32", "I64"))
            if ckpt.info(f"{prefix}.g_idx").shape != (in_features,):
                raise layer_error(ckpt, prefix, "g_idx", f"shape {list(ckpt.info(f'{prefix}.g_idx').shape)}, expected [{in_features}]")
        return in_features, out, gs

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        cls.geometry(ckpt, prefix, fmt)
        return packing.unpack(ckpt.read(f"{prefix}.qzeros"), fmt.for_layer(prefix).bits, dim=1)

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        b = fmt.for_layer(prefix).bits
        qzeros = ckpt.read(f"{prefix}.qzeros")
        if fmt.zero_point_convention == ZP_V1_WORD and 32 % b == 0:
            zeros = packing.unpack(packing.v1_word_decode(qzeros, b), b, dim=1)
        else:
            stored = packing.unpack(qzeros, b, dim=1)
            zeros = stored if fmt.zero_point_convention == ZP_V2 else packing.v1_decode_zeros(stored, b)
        g_idx = ckpt.read(f"{prefix}.g_idx").to(torch.int32) if ckpt.has(f"{prefix}.g_idx") else None
        layer = QuantLinear(
            name=prefix,
            in_features=in_features,
            out_features=out,
            bits=b,
            group_size=gs,
            zeros=zeros.T.contiguous(),
            scales=ckpt.read(f"{prefix}.scales").T.contiguous(),
            g_idx=g_idx,
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            layer.codes = packing.unpack(ckpt.read(f"{prefix}.qweight"), b, dim=0).T.contiguous()
        return validated(ckpt, prefix, layer)

    @classmethod
    def packed_codes(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> PackedCodes:
        return packed_source_words(ckpt, f"{prefix}.qweight", fmt.for_layer(prefix).bits, 0, None)

    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        b = layer.bits
        if b not in (2, 3, 4, 8):
            return f"GPTQ stores 2, 3, 4 or 8 bits, not {b}"
        if (layer.in_features * b) % 32 or (layer.out_features * b) % 32:
            return f"in_features {layer.in_features} and out_features {layer.out_features} must pack into whole 32-bit words at {b} bits"
        return None

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        p, b, g, out = layer.name, layer.bits, layer.num_groups, layer.out_features
        specs = [
            TensorSpec(f"{p}.qweight", "I32", (layer.in_features * b // 32, out)),
            TensorSpec(f"{p}.qzeros", "I32", (g, out * b // 32)),
            spec_of(f"{p}.scales", layer.scales.T),
            # Written even without act-order: transformers+gptqmodel build g_idx from uninitialised
            # memory when it is missing (PEERS.md 1), and AutoGPTQ always writes it.
            TensorSpec(f"{p}.g_idx", "I32", (layer.in_features,)),
        ]
        if layer.bias is not None:
            specs.append(spec_of(f"{p}.bias", layer.bias))
        return specs

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        p, b = layer.name, layer.bits
        stored = packing.v1_encode_zeros(layer.zeros, b) if zero_point_convention == ZP_V1 else layer.zeros
        g_idx = layer.g_idx if layer.g_idx is not None else default_g_idx(layer.in_features, layer.group_size)
        tensors = {
            f"{p}.qweight": layer.pack_codes(dim=0),
            f"{p}.qzeros": packing.pack(stored.T, b, dim=1),
            f"{p}.scales": layer.scales.T.contiguous(),
            f"{p}.g_idx": g_idx.to(torch.int32).contiguous(),
        }
        if layer.bias is not None:
            tensors[f"{p}.bias"] = layer.bias
        return tensors


# -- GPTQModel's per-module ``dynamic`` overrides (mixed precision) ------------------------------------
#
# ``quantization_config.dynamic`` maps patterns to overrides, e.g. ``{"+:.*down_proj": {"bits": 8}}``.
# GPTQModel (quantization/config.py, _resolve_dynamic_override) takes, for each module name, the FIRST
# pattern in the mapping's order whose regex ``match``es it (anchored at the start only; a ``^name$``
# pattern is looked up as an exact name, which is the same answer). ``-:`` means "not quantized";
# ``+:`` or no prefix means quantized with the listed keys (bits, group_size, sym, desc_act) replacing
# the model-level ones (utils/model.py, make_quant).


def dynamic_override(dynamic: dict, module: str) -> dict | bool | None:
    """GPTQModel's answer for one module: its override dict, False (``-:``, not quantized) or None (no
    pattern matches: the model-level settings apply). Raises ValueError for a pattern that is no regex."""
    for pattern, overrides in dynamic.items():
        negative = pattern.startswith("-:")
        raw = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        try:
            hit = re.match(raw, module) is not None
        except re.error as e:
            raise ValueError(f"dynamic pattern {pattern!r} is not a valid regex ({e})") from None
        if hit:
            return False if negative else dict(overrides or {})
    return None


def dynamic_config(layers: list, bits: int, group_size: int, sym: bool, unquantized: list[str]) -> dict:
    """``dynamic`` for a target whose model-level settings are (bits, group_size, sym): one ``+:`` regex per
    other precision, naming its layers exactly (``^(?:a|b)$``), and a ``-:`` entry for the linears left
    unquantized, which GPTQModel would otherwise build as quantized modules."""
    groups: dict[tuple[int, int, bool], list[str]] = {}
    for layer in layers:
        gs = -1 if layer.group_size >= layer.in_features else layer.group_size
        same = layer.bits == bits and layer.group_size == effective_group_size(group_size, layer.in_features)
        if not same or (sym and not layer.is_symmetric):
            groups.setdefault((layer.bits, gs, bool(layer.is_symmetric)), []).append(layer.name)
    if not groups:
        return {}
    dynamic = {}
    for (b, gs, s), names in sorted(groups.items()):
        dynamic[f"+:^(?:{'|'.join(re.escape(n) for n in sorted(names))})$"] = {"bits": b, "group_size": gs, "sym": s}
    if unquantized:
        dynamic[f"-:^(?:{'|'.join(re.escape(n) for n in sorted(unquantized))})$"] = {}
    return dynamic


# -- detection ---------------------------------------------------------------------------------

def is_mixed_gptq(fmt: SourceFormat) -> bool:
    """A GPTQ checkpoint with per-module `dynamic` precisions: transformers' GPTQ dispatch builds every layer at
    the base precision (and fails on the others' shapes), GPTQModel's own loader reads them. (AutoRound's
    `extra_config` goes through transformers to auto-round, which reads it.)"""
    return fmt.name in ("gptq", "gptq-v2") and fmt.quant_method == "gptq" and bool(fmt.layer_overrides)


GPTQ_CHECKPOINT_FORMATS = {"gptq": ZP_V1, "gptq_v2": ZP_V2}


class GptqDetection(Detection):
    """``quant_method: gptq`` (AutoGPTQ, GPTQModel, optimum, INC's huggingface format): checkpoint_format
    says v1 or v2; GPTQModel's own v1 is its word-arithmetic dialect."""

    quant_methods = ("gptq",)
    # AutoGPTQ's and GPTQModel's quantize config (and the name some exporters give it).
    config_files = ("quantize_config.json", "quantization_config.json")
    unlabelled_config_files = ("quantize_config.json",)  # AutoGPTQ's, which states no quant_method
    override_tables = {"dynamic": dynamic_override}
    transformers_config = "GPTQConfig"
    transformers_needs = (("gptqmodel", "verify"), ("optimum", "verify"))

    @classmethod
    def output_loader(cls, out) -> str | None:
        fmt = out.format
        by_producer = next((d.producer_loader for d in Detection.registry if d.producer_loader and d.producer == fmt.producer), None)
        if fmt.name == "gptq" and by_producer:
            return by_producer  # INC's huggingface format: INC's own load()
        return "gptqmodel" if is_mixed_gptq(fmt) else None

    @classmethod
    def source_loader(cls, src) -> str:
        loader = super().source_loader(src)
        if loader == "transformers" and is_mixed_gptq(src.format):
            # GPTQModel refuses asymmetric GPTQ v1 that an older GPTQModel did not write (AutoRound's auto_gptq)
            return "gptqmodel" if src.format.zero_point_convention == ZP_V2 or src.format.sym else "dense"
        return loader

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        where = ckpt.root / file
        ckfmt = detect.config_choice(qc, ("checkpoint_format", "format"), "gptq", GPTQ_CHECKPOINT_FORMATS, "GPTQ checkpoint_format", where)
        pack_dtype = qc.get("pack_dtype", "int32")
        if pack_dtype != "int32":
            raise FormatError(f"GPTQ pack_dtype {pack_dtype!r} is not supported (only int32)", file=where)
        convention = GPTQ_CHECKPOINT_FORMATS[ckfmt]
        producer = detect.producer(qc, ckpt)
        # GPTQModel writes v1 by whole-word subtraction, so its v1 files decode by word addition.
        if convention == ZP_V1 and "gptqmodel" in producer.lower():
            convention = ZP_V1_WORD
        return detect.affine_format(ckpt, qc, file, name="gptq" if convention != ZP_V2 else "gptq-v2", family="gptq",
                                    convention=convention, method=method, producer=producer)


# -- targets ----------------------------------------------------------------------------------

def _dynamic(summary: ModelQuantSummary) -> dict:
    """GPTQModel's per-module ``dynamic`` for layers whose precision differs from the model-level one
    (mixed precision); nothing for a uniform checkpoint."""
    declared = summary.declared.get("dynamic") if isinstance(summary.declared.get("dynamic"), dict) else {}
    negatives = any(k.startswith("-:") for k in declared)
    dynamic = dynamic_config(summary.layers, summary.bits, summary.group_size, summary.sym,
                                  summary.unquantized_linears if negatives else [])
    return {"dynamic": dynamic} if dynamic else {}


def valid_damp(declared: dict) -> float:
    meta = declared.get("meta") if isinstance(declared.get("meta"), dict) else {}
    for value in (declared.get("damp_percent"), meta.get("damp_percent")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
    # transformers' GPTQConfig and GPTQModel refuse 0 (INC's RTN export writes it); GPTQ's default.
    return 0.01


def _vllm_gptq(facts) -> Verdict:
    """vLLM 0.32's AutoGPTQConfig, CPU and CUDA alike: no group act-order (``desc_act`` true with groups), then
    (bits, sym) in {(4, True), (8, True)}; it reads no zero points (``zero_points=False``), so a symmetric
    checkpoint loads whichever convention it stores."""
    if facts.desc_act and facts.declared_group_size not in (-1, 0):
        return refuses("vLLM 0.32 refuses act-order: `GPTQ group activation ordering (desc_act=True) is no longer supported. "
                       "Use a checkpoint with static activation ordering or desc_act=False.`")
    if not facts.bits <= {4, 8}:
        return refuses(f"vLLM reads 4- and 8-bit GPTQ only, not {bits_label(facts)}")
    return needs_symmetry(facts, loads, f"vLLM refuses asymmetric GPTQ (`Unsupported quantization config: bits={facts.declared_bits or max(facts.bits)}, "
                                        "sym=False`): it reads no zero points")


def gptq_engines(facts, *, v2: bool) -> dict:
    """GPTQ checkpoints (v1, v2, and INC's huggingface format, which is v1) as each engine reads them."""
    found = {
        "transformers": loads("with optimum + gptqmodel" + ("; per-module `dynamic` needs GPTQModel.load, transformers ignores it"
                                                            if facts.mixed else "")),
        "vllm-cpu": vllm_reads_its_config(facts, vllm_cpu_kernel(facts, _vllm_gptq(facts))),
        "vllm-cuda": vllm_reads_its_config(facts, _vllm_gptq(facts)),
    }
    if v2:
        found["vllm-gaudi"] = refuses("vllm-gaudi's GPTQ path reads zero points as v1 (z - 1) whatever checkpoint_format says")
        found["inc-cpu"] = refuses("INC reads GPTQ zero points as v1: a v2 checkpoint loads and gives silently wrong logits")
        found["inc-gaudi"] = found["inc-cpu"]
        return found
    found["vllm-gaudi"] = loads("gptq_hpu (opt-in)") if facts.bits == {4} else refuses("vllm-gaudi's GPTQ path is 4-bit only")
    found["inc-cpu"] = loads('load(path, format="huggingface", torch_dtype=torch.float32)')
    found["inc-gaudi"] = gaudi_verdict(facts, cached=facts.gaudi_cache)
    return found


class GptqTarget(Target):
    """GPTQ's safetensors layout and quantize_config.json: the base of the GPTQ targets and of INC's huggingface one."""

    family = GptqFamily
    keeps_g_idx = True
    per_layer_precision = True
    checkpoint_format: str

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        d = summary.declared
        return {
            "quant_method": "gptq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            "desc_act": summary.desc_act,
            "sym": summary.sym,
            "damp_percent": valid_damp(d),
            "true_sequential": bool(d.get("true_sequential", True)),
            "static_groups": False,
            "lm_head": False,
            "checkpoint_format": self.checkpoint_format,
            "format": self.checkpoint_format,
            "pack_dtype": "int32",
            "model_file_base_name": "model",
            **_dynamic(summary),
        }

    def config_files(self, qc, summary):
        # AutoGPTQ and GPTQModel read quantize_config.json when config.json lacks the section.
        return {"quantize_config.json": qc}

    def byte_route(self, layer, source_family, source_convention):
        return gptq_layout_route(self, layer, source_family, source_convention)


class GptqV1Target(GptqTarget):
    name = "gptq"
    zero_point_convention = ZP_V1
    checkpoint_format = "gptq"
    engines = staticmethod(lambda facts: gptq_engines(facts, v2=False))
    description = "GPTQ v1 (AutoGPTQ / transformers / optimum / INC): zero points stored as z-1"
    load_examples = (
        neural_compressor_load('model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  '
                               '# INC repacks GPTQ at load; a woqconv --to hpu checkpoint skips that'),
        TRANSFORMERS_LOAD,
    )


class GptqV2Target(GptqTarget):
    name = "gptq-v2"
    zero_point_convention = ZP_V2
    checkpoint_format = "gptq_v2"
    engines = staticmethod(lambda facts: gptq_engines(facts, v2=True))
    description = "GPTQ v2 (GPTQModel): zero points stored as they are, z = 0 allowed"
