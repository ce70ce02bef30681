"""Conversion targets: a layout family, a zero-point convention, and the config its loaders accept.

``prepare`` turns a source IR layer into what the target can hold without loss, or says why it
cannot (a refusal, never a silent approximation), or what it would lose (``lossy``, which the
converter refuses unless the user accepted that specific loss). ``quantization_config`` writes the
config that the target's real loaders accept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from .._lazy import torch
from ..ir import CodebookLinear, GIdxKind, QuantLinear
from .awq import AwqGemmFamily
from .base import ZP_V1, ZP_V2, LayerFamily
from .bnb import BnbFamily, code_table, double_quant, undo_double_quant, dynamic_map_signed, NESTED_BLOCKSIZE
from .gptq import GptqFamily, effective_group_size
from .gptq import dynamic_config as gptq_dynamic_config
from .inc import HpuFamily
from .inc_hpu_cache import HPU_WEIGHT_NAME


@dataclass
class ModelQuantSummary:
    """What a target's config needs to know about the whole converted model."""

    bits: int
    group_size: int  # as declared by the source (-1 kept)
    sym: bool
    desc_act: bool  # some layer keeps a non-trivial g_idx
    declared: dict  # the source's quantization_config
    unquantized_linears: list[str] = field(default_factory=list)
    layers: list[QuantLinear] = field(default_factory=list)  # prepared layers (no codes)
    wrapped_modules: list[str] = field(default_factory=list)  # INC MulLinear modules (layer = module + ".linear")


@dataclass
class Prepared:
    layer: QuantLinear
    changes: list[str]  # what was done to the layer, e.g. "g_idx relabelled"
    refusal: str | None = None  # why the layer cannot be written; the converter aggregates these
    zero_point_zero_groups: int = 0
    # What a lossy step changes, with its "kind": "bf16" (scales cast for Gaudi; needs allow_bf16),
    # "double-quant" (absmax re-quantized on request) or "requantize" (new integers fitted).
    lossy: dict | None = None
    # The refusal is one that requantization resolves (a codebook <-> affine change, another code
    # table, scattered act-order groups for a target without g_idx).
    requantizable: bool = False
    requant: object | None = None  # the recipe (woqconv.requant) when the plan requantizes this layer


@dataclass(frozen=True)
class Companion:
    """A second weights file written in the same pass (INC's Gaudi cache beside the HF weights)."""

    file: str
    family: type[LayerFamily]
    zero_point_convention: str
    float_dtype: str  # safetensors dtype every unquantized float tensor is cast to


def bf16_scale_loss(scales: torch.Tensor, via: torch.dtype | None = None) -> dict | None:
    """How casting scales to bf16 (through ``via`` first) changes them: None when exact (bf16 sources,
    lucky fp16 values)."""
    return scale_cast_loss(scales, torch.bfloat16, via)


def scale_cast_loss(scales: torch.Tensor, dtype: torch.dtype, via: torch.dtype | None = None) -> dict | None:
    """How casting scales to ``dtype`` (through ``via`` first) changes them: None when every value survives exactly."""
    if scales.dtype == dtype:
        return None
    s = scales.to(torch.float32)
    # Exact in fp32: a value and its rounding to a narrower float are within a factor of 2.
    diff = (scales.to(via) if via is not None else scales).to(dtype).to(torch.float32) - s
    n = int(torch.count_nonzero(diff))
    if not n:
        return None
    # Values that survived contribute a relative change of 0, so the max needs no mask.
    rel = diff.abs_().div_(s.abs().clamp_min_(torch.finfo(torch.float32).tiny))
    return {"scales_changed": n, "scales_total": s.numel(), "max_rel_change": float(rel.max())}


class Target:
    name: str
    family: type[LayerFamily]
    zero_point_convention: str
    description: str
    keeps_g_idx: bool
    container: str = "safetensors"  # or "inc-pt": INC's torch.save'd state dict
    companion: Companion | None = None
    holds_mul_linear: bool = False  # INC default can rebuild MulLinear wrappers; others cannot
    # v1 writers that store z = 0 as an all-ones field (INC's modular dialect) instead of refusing.
    v1_zero_point_zero: str = "refuse"
    # The dtype the target's loader casts scales to on load (INC's optimum modules hold fp16 buffers);
    # the file keeps the scales exactly, but the user is told what the loader will do with them.
    loader_scale_dtype: str | None = None  # torch dtype name
    # The target's config can state bits / group size per layer (GPTQModel's ``dynamic``, INC's
    # per-module entries); the others hold one precision per checkpoint.
    per_layer_precision: bool = False
    # The target's loaders need the architecture (config.json) beside the weights; INC's default format
    # does not: its load() takes the original model from the user.
    needs_config: bool = True
    # Unquantized 16-bit float tensors are written widened to this dtype (exact), or kept as they are.
    carried_float_dtype: str | None = None
    # Gaudi computes with bf16 scales: a target that pre-bakes INC's Gaudi cache casts them (lossy unless
    # they are bf16-exact, and refused until the user accepts it).
    bf16_scales: bool = False
    # INC's default-format Gaudi cache (quantized_hpu_weight.pt), written from the finished weights.
    default_hpu_cache: str | None = None

    def check_bits(self, layer: QuantLinear) -> str | None:
        return None

    def prepare(self, layer: QuantLinear) -> Prepared:
        if isinstance(layer, CodebookLinear):
            return Prepared(
                layer, [],
                f"{layer.quant_type} is a 16-value code table, and {self.name} stores evenly spaced integers: no "
                f"{self.name} layer equals it (lossy); --requantize would fit {self.name} integers to the dequantized "
                "weights and report the error per layer",
                requantizable=True,
            )
        cache_family = [HpuFamily] if self.default_hpu_cache else [self.companion.family] if self.companion else []
        for family in (*cache_family, self.family):
            problem = family.check_writable(layer)
            if problem:
                return Prepared(layer, [], problem)
        problem = self.check_bits(layer)
        if problem:
            return Prepared(layer, [], problem)
        changes = []
        kind = layer.g_idx_kind
        if not self.keeps_g_idx and kind is not GIdxKind.NONE:
            if kind is GIdxKind.SCATTERED:
                return Prepared(
                    layer, [],
                    f"scattered act-order g_idx cannot be expressed in {self.name} (no g_idx); --requantize would refit "
                    "contiguous groups (lossy, error reported per layer), or convert to gptq / gptq-v2 / inc / inc-hf, "
                    "which keep g_idx",
                    requantizable=True,
                )
            layer = layer.with_contiguous_groups()
            changes.append("trivial g_idx dropped" if kind is GIdxKind.TRIVIAL else "block-uniform g_idx relabelled (group rows permuted)")
        # Counted only when the minimum says there is one (a count costs 40x the min over a 7B layer).
        zero = int((layer.zeros == 0).sum()) if layer.zeros.numel() and int(layer.zeros.min()) == 0 else 0
        if self.zero_point_convention == ZP_V1 and zero:
            if self.v1_zero_point_zero == "refuse":
                return Prepared(layer, [], f"{zero} groups have zero point 0", zero_point_zero_groups=zero)
            changes.append(f"{zero} zero points of 0 stored as all-ones fields (INC's modular v1)")
        # INC's default route holds scales in its fp16 optimum buffers before packing them for Gaudi.
        lossy = bf16_scale_loss(layer.scales, torch.float16 if self.default_hpu_cache else None) if self.bf16_scales else None
        if lossy:
            lossy = {"kind": "bf16", **lossy}
        return Prepared(layer, changes, zero_point_zero_groups=zero, lossy=lossy)

    def quantization_config(self, summary: ModelQuantSummary) -> dict | None:
        raise TypeError(f"target {self.name} does not define a config")

    def config_files(self, qc: dict | None, summary: ModelQuantSummary) -> dict[str, dict]:
        """Extra JSON files (beside config.json) that this target's tools read."""
        return {}


def _dynamic(summary: ModelQuantSummary) -> dict:
    """GPTQModel's per-module ``dynamic`` for layers whose precision differs from the model-level one
    (mixed precision); nothing for a uniform checkpoint."""
    declared = summary.declared.get("dynamic") if isinstance(summary.declared.get("dynamic"), dict) else {}
    negatives = any(k.startswith("-:") for k in declared)
    dynamic = gptq_dynamic_config(summary.layers, summary.bits, summary.group_size, summary.sym,
                                  summary.unquantized_linears if negatives else [])
    return {"dynamic": dynamic} if dynamic else {}


def _valid_damp(declared: dict) -> float:
    meta = declared.get("meta") if isinstance(declared.get("meta"), dict) else {}
    for value in (declared.get("damp_percent"), meta.get("damp_percent")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
    # transformers' GPTQConfig and GPTQModel refuse 0 (INC's RTN export writes it); GPTQ's default.
    return 0.01


class _GptqTarget(Target):
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
            "damp_percent": _valid_damp(d),
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


class GptqV1Target(_GptqTarget):
    name = "gptq"
    zero_point_convention = ZP_V1
    checkpoint_format = "gptq"
    description = "GPTQ v1 (AutoGPTQ / transformers / optimum / INC): zero points stored as z-1"


class GptqV2Target(_GptqTarget):
    name = "gptq-v2"
    zero_point_convention = ZP_V2
    checkpoint_format = "gptq_v2"
    description = "GPTQ v2 (GPTQModel): zero points stored as they are, z = 0 allowed"


class AwqGemmTarget(Target):
    name = "awq"
    family = AwqGemmFamily
    zero_point_convention = ZP_V2
    keeps_g_idx = False
    description = "AWQ GEMM (AutoAWQ / transformers + gptqmodel): 4-bit, interleaved, no g_idx"

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        declared_skip = summary.declared.get("modules_to_not_convert")
        skip = declared_skip if isinstance(declared_skip, list) else sorted(summary.unquantized_linears)
        return {
            "quant_method": "awq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            # qzeros are always written; zero_point false only tells loaders they all equal 8.
            "zero_point": not summary.sym,
            "version": "gemm",
            "modules_to_not_convert": skip or None,
        }


def _inc_bits(layer: QuantLinear) -> str | None:
    # INC's packer puts floor(32/b) fields in a word: 2/4/8 bits match GPTQ's stream, 3 bits do not.
    if layer.bits not in (2, 4, 8):
        return f"INC packs {layer.bits}-bit codes {32 // layer.bits} to a word, not as GPTQ's bit stream; INC targets take 2, 4 or 8 bits"
    # INC's dequant casts (q - z) to int8 (modules.py, INCWeightOnlyLinear.recover): at 8 bits that
    # wraps unless z = 128, where q - z spans exactly [-128, 127].
    if layer.bits == 8 and not layer.is_symmetric:
        return "INC computes 8-bit weights as int8(q - z), which wraps for asymmetric zero points; use gptq or gptq-v2"
    return None


class IncHfTarget(Target):
    name = "inc-hf"
    family = GptqFamily
    zero_point_convention = ZP_V1
    keeps_g_idx = True
    v1_zero_point_zero = "modular"
    loader_scale_dtype = "float16"
    # INC's huggingface loader builds every module from the model-level bits/group_size and ignores
    # GPTQModel's ``dynamic`` (a mixed checkpoint fails its state-dict load with size mismatches).
    per_layer_precision = False
    description = "INC huggingface format: GPTQ v1 safetensors that INC's load() and transformers read"

    def check_bits(self, layer):
        return _inc_bits(layer)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        # INC's change_config_to_hf_format keys, with a damp_percent transformers accepts.
        return {
            "quant_method": "gptq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            "damp_percent": _valid_damp(summary.declared),
            "desc_act": summary.desc_act,
            "sym": summary.sym,
            "true_sequential": bool(summary.declared.get("true_sequential", False)),
            "model_name_or_path": None,
            "model_file_base_name": "model",
            "checkpoint_format": "gptq",
        }

    def config_files(self, qc, summary):
        return {"quantize_config.json": qc}


class HpuTarget(IncHfTarget):
    name = "hpu"
    keeps_g_idx = False  # INC drops ordered g_idx, and older SynapseAI ignores any g_idx
    bf16_scales = True
    companion = Companion("hpu_model.safetensors", HpuFamily, ZP_V2, "BF16")
    description = "inc-hf plus the hpu_model.safetensors cache INC's Gaudi loader reads without repacking"


class IncDefaultTarget(Target):
    name = "inc"
    family = GptqFamily
    zero_point_convention = ZP_V1
    keeps_g_idx = True
    v1_zero_point_zero = "modular"
    container = "inc-pt"
    holds_mul_linear = True
    per_layer_precision = True
    loader_scale_dtype = "float16"
    needs_config = False
    # Every entry is labelled awq (below), so INC's load assigns the checkpoint's unquantized tensors into
    # the user's original model, replacing its parameters with the file's dtype. fp16 or bf16 ones would
    # then meet the fp32 activations INC's CPU linears return ("mixed dtype", "m1 and m2 ... same dtype")
    # whatever dtype the user built the model in; fp32 holds every 16-bit value exactly and runs with
    # original models built in float32 or bfloat16 alike.
    carried_float_dtype = "F32"
    description = "INC default format: qconfig.json + quantized_weight.pt for load(..., original_model=...)"

    def check_bits(self, layer):
        return _inc_bits(layer)

    def quantization_config(self, summary: ModelQuantSummary) -> None:
        return None  # the default format has per-module entries in qconfig.json, not a model-level config

    def config_files(self, qc, summary):
        wrapped = set(summary.wrapped_modules)
        entries = {}
        for layer in summary.layers:
            module = layer.name[: -len(".linear")] if layer.name.endswith(".linear") and layer.name[: -len(".linear")] in wrapped else layer.name
            # INC's loader builds each module from dtype/bits/group_size and keeps g_idx only when the
            # entry says desc_act (its own GPTQ entries say act_order and lose it). It takes the
            # checkpoint's unquantized tensors (norms AWQ rescaled, embeddings) only when the first
            # entry's algorithm is awq or teq; woqconv's checkpoint carries them all, so every entry
            # is labelled awq, the label under which INC uses what the file holds.
            entries[str((module, "Linear"))] = {
                "awq": {
                    "dtype": "int",
                    "bits": layer.bits,
                    "use_sym": layer.is_symmetric,
                    "group_size": _entry_group_size(layer, summary.group_size),
                    "group_dim": 1,
                    "use_full_range": False,
                    "use_mse_search": False,
                    "use_layer_wise": False,
                    "use_double_quant": False,
                    "desc_act": layer.g_idx_kind in (GIdxKind.BLOCK_UNIFORM, GIdxKind.SCATTERED),
                    "folding": False,
                }
            }
        return {"qconfig.json": entries}


class HpuDefaultTarget(IncDefaultTarget):
    """The Gaudi recipe's own route: INC's default format, loaded with
    ``load(OUT, format="default", device="hpu", original_model=...)``, plus the cache INC writes on that
    first load (``quantized_hpu_weight.pt``), so that INC repacks nothing."""

    name = "hpu-default"
    keeps_g_idx = False  # as hpu: older SynapseAI ignores any g_idx
    bf16_scales = True
    needs_config = True  # the cache's key order is the architecture's module tree
    default_hpu_cache = HPU_WEIGHT_NAME
    description = "inc plus the quantized_hpu_weight.pt cache INC's default-format Gaudi loader reads without repacking"


def _entry_group_size(layer: QuantLinear, declared: int) -> int:
    """A qconfig.json entry's group size: the model's declared one when it is this layer's, else the layer's
    own (-1 for one group per row), so mixed group sizes survive."""
    if layer.group_size == effective_group_size(declared, layer.in_features):
        return declared
    return -1 if layer.group_size >= layer.in_features else layer.group_size


def table_mapping(code: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """For each of the 16 entries of ``code``, the index of the bit-identical value in ``table``; None
    if some entry has no exact twin (then only requantization can move the layer to ``table``)."""
    src = code.to(torch.float32).contiguous().view(torch.int32)
    dst = table.to(torch.float32).contiguous().view(torch.int32)
    # +0.0 and -0.0 give the same products up to the sign of zero; compare them as one value.
    src = torch.where(src == torch.tensor(-(2**31), dtype=torch.int32), torch.zeros_like(src), src)
    dst = torch.where(dst == torch.tensor(-(2**31), dtype=torch.int32), torch.zeros_like(dst), dst)
    hits = src[:, None] == dst[None, :]
    if not bool(hits.any(dim=1).all()):
        return None
    first = hits.to(torch.int8).argmax(dim=1)
    # An entry that already matches in place keeps its index (FP4 holds 0.0 twice: at 0 and 8).
    return torch.where(hits.diagonal(), torch.arange(16), first)


def double_quant_loss(absmax: torch.Tensor) -> dict:
    """How storing ``absmax`` double-quantized (8-bit codes per 256-block) changes it."""
    codes, nested, offset = double_quant(absmax)
    back = undo_double_quant(codes, nested, dynamic_map_signed(), NESTED_BLOCKSIZE, offset)
    changed = back != absmax
    rel = ((back - absmax).abs() / absmax.abs().clamp_min(torch.finfo(torch.float32).tiny))
    return {"kind": "double-quant", "absmax_changed": int(changed.sum()), "absmax_total": absmax.numel(),
            "max_rel_change": float(rel.max()) if rel.numel() else 0.0}


class BnbTarget(Target):
    """bitsandbytes 4-bit, as transformers loads it: the code table is bitsandbytes' own."""

    family = BnbFamily
    zero_point_convention = None
    keeps_g_idx = False
    quant_type: str
    double_quant = False  # store absmax double-quantized (lossy); set through configured()

    def configured(self, *, double_quant: bool = False) -> "BnbTarget":
        t = copy.copy(self)
        t.double_quant = double_quant
        return t

    def prepare(self, layer) -> Prepared:
        if not isinstance(layer, CodebookLinear):
            return Prepared(
                layer, [],
                f"{layer.bits}-bit affine integers are not values of the {self.quant_type} code table: writing {self.name} "
                f"means new indices for every weight (lossy); --requantize would fit {self.quant_type} blocks to the "
                "dequantized weights and report the error per layer",
                requantizable=True,
            )
        problem = self.family.check_writable(layer)
        if problem:
            return Prepared(layer, [], problem)
        table = code_table(self.quant_type)
        perm = table_mapping(layer.code, table)
        if perm is None:
            return Prepared(
                layer, [],
                f"its {layer.quant_type} table holds values bitsandbytes' {self.quant_type} table does not (the products "
                "would change); --requantize would fit new indices and absmax and report the error per layer",
                requantizable=True,
            )
        changes = []
        if not torch.equal(perm, torch.arange(16)):
            changes.append(f"indices renumbered to bitsandbytes' {self.quant_type} table order")
        if layer.double_quant and not self.double_quant:
            changes.append("double quantization undone: absmax stored as the exact fp32 values")
        idx = perm.to(torch.uint8)[layer.idx.to(torch.int64)] if layer.idx is not None else None
        new = replace(layer, code=table.clone(), quant_type=self.quant_type, idx=idx, double_quant=self.double_quant)
        lossy = double_quant_loss(layer.absmax) if self.double_quant else None
        return Prepared(new, changes, lossy=lossy)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        dtypes = {str(layer.dtype).replace("torch.", "") for layer in summary.layers}
        compute = dtypes.pop() if len(dtypes) == 1 else "float32"
        skip = sorted(summary.unquantized_linears)
        return {
            "_load_in_4bit": True,
            "_load_in_8bit": False,
            "bnb_4bit_compute_dtype": compute,
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.quant_type,
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": skip or None,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": True,
            "load_in_8bit": False,
            "quant_method": "bitsandbytes",
        }


class Nf4Target(BnbTarget):
    name = "nf4"
    quant_type = "nf4"
    description = "bitsandbytes NF4 (transformers + bitsandbytes), blocks of 64 by default"


class Fp4Target(BnbTarget):
    name = "fp4"
    quant_type = "fp4"
    description = "bitsandbytes FP4 (transformers + bitsandbytes)"


from .openvino_target import OpenvinoTarget  # noqa: E402  (it subclasses Target, defined above)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (GptqV1Target(), GptqV2Target(), AwqGemmTarget(), IncDefaultTarget(), IncHfTarget(), HpuTarget(), HpuDefaultTarget(), Nf4Target(),
              Fp4Target(), OpenvinoTarget())
}
