"""Conversion targets: a layout family, a zero-point convention, and the config its loaders accept.

``prepare`` turns a source IR layer into what the target can hold without loss, or says why it
cannot (a refusal, never a silent approximation), or what it would lose (``lossy``, which the
converter refuses unless the user accepted that specific loss). ``quantization_config`` writes the
config that the target's real loaders accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._lazy import torch
from ..ir import CodebookLinear, GIdxKind, QuantLinear
from ..requant import AffineRecipe, CodebookRecipe
from .scan import ScannedLayer
from ..io.safetensors_io import TORCH_NAMES, TensorSpec
from ..tensor_ops import Copy, ShiftFields, Small, TensorOp
from .base import ZP_V1, ZP_V2, LayerFamily


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
    wrapped_modules: list[str] = field(default_factory=list)  # Detection.wrapped_modules (layer = module + ".linear")


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


@dataclass
class ByteRoute:
    """A layer written by moving bytes alone (no torch): its output tensors, how each is made, and what
    changed, in the words ``Target.prepare`` uses."""

    specs: list[TensorSpec]
    ops: dict[str, TensorOp]
    changes: list[str] = field(default_factory=list)


def plain_gptq4(layer: ScannedLayer, source_family: str, source_convention: str) -> bool:
    """A 4-bit GPTQ layer whose bytes other layouts can be made from directly: contiguous groups (no
    g_idx, or a trivial one), whole words in both directions, and zero points stored as v1 or v2 fields
    (GPTQModel's word-arithmetic v1 is decoded with torch)."""
    return (source_family == "gptq" and layer.bits == 4 and layer.g_idx_kind in (GIdxKind.NONE, GIdxKind.TRIVIAL)
            and layer.in_features % 8 == 0 and layer.out_features % 8 == 0 and source_convention in (ZP_V1, ZP_V2))


def zero_point_delta(source_convention: str, target_convention: str) -> int:
    """What each stored zero-point field gains from source to target: +1 out of v1 (z - 1), -1 into it."""
    return (source_convention == ZP_V1) - (target_convention == ZP_V1)


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


@dataclass(frozen=True)
class LoadExample:
    """One way to load a target's output, as the model card shows it: a sentence, then Python code in which
    ``{repo}`` is the pushed repo's id. The tokenizer's import (``{tokenizer_import}``: ", AutoTokenizer" after a
    transformers import; ``{tokenizer_import_line}``: a line of its own) and its load (``{tokenizer}``) are filled
    in only when the repo holds a tokenizer (INC's and bitsandbytes' saves write none), else left out."""

    intro: str
    code: str


TRANSFORMERS_LOAD = LoadExample(
    "With transformers (the gptqmodel backend on CPU/CUDA):",
    'from transformers import AutoModelForCausalLM{tokenizer_import}\n\n'
    'model = AutoModelForCausalLM.from_pretrained("{repo}"){tokenizer}',
)


def neural_compressor_load(call: str, *, gaudi: bool = True, original_model: bool = False) -> LoadExample:
    """INC's ``load`` of the downloaded repo (``call`` uses ``path``; ``original_model``: INC's default format,
    which builds the model from its config first)."""
    imports = ["import torch", "from huggingface_hub import snapshot_download", "from neural_compressor.torch.quantization import load"]
    if original_model:
        imports.append("from transformers import AutoConfig, AutoModelForCausalLM")
    return LoadExample("With Intel Neural Compressor" + (" on Gaudi:" if gaudi else ":"),
                       "\n".join(imports) + '\n\npath = snapshot_download("{repo}")\n' + call)


# Every target by name, in the order their modules define them: each Target subclass that names itself
# registers here (formats/__init__.py imports the format modules in the order the CLI lists them).
TARGETS: dict[str, "Target"] = {}


class Target:
    name: str
    family: type[LayerFamily]
    zero_point_convention: str
    description: str
    keeps_g_idx: bool
    # What the output's weights are: "safetensors" shards, written by the streaming writer; other containers
    # are made by the target from those shards (finish) or written by its own means (write_whole).
    container: str = "safetensors"
    companion: Companion | None = None
    holds_wrappers: bool = False  # it rebuilds a producer's wrapper modules (Detection.wrapped_modules)
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
    # Unquantized 16-bit float tensors are written widened to this dtype (exact), or kept as they are, and why.
    carried_float_dtype: str | None = None
    carried_float_reason: str = ""
    # Gaudi computes with bf16 scales: a target that pre-bakes INC's Gaudi cache casts them (lossy unless
    # they are bf16-exact, and refused until the user accepts it).
    bf16_scales: bool = False
    # INC's default-format Gaudi cache (quantized_hpu_weight.pt), written from the finished weights, and
    # the layout family its layers must fit.
    default_hpu_cache: str | None = None
    cache_family: type[LayerFamily] | None = None
    # The loader `woqconv verify` runs an output of this target in (woqconv.runtime.worker's names), and the
    # ways the model card shows to load it.
    loader: str = "transformers"
    load_examples: tuple[LoadExample, ...] = (TRANSFORMERS_LOAD,)
    # The target can store its scales double-quantized (bitsandbytes' absmax), through configured().
    double_quant_option: bool = False
    # The target writes weights in a dtype the user picks (``--dtype``), through configured(dtype=...).
    dtype_option: bool = False
    dtype_choices: tuple[str, ...] = ()
    # Its encoder may lose something that only the written values tell (``encode``'s measured loss).
    lossy_encoding: bool = False
    # Modules writing it needs beyond woqconv's own, each with the woqconv extra that installs it.
    needs: tuple[tuple[str, str], ...] = ()
    # What each inference engine makes of this target's checkpoints as they stand (woqconv.engines):
    # facts -> {engine key: Verdict}; engines left out do not read the format. None: nothing declared.
    engines: Callable | None = None
    # What a user should know of this target when inspect suggests it as the fix for an engine.
    fix_note: str = ""
    # Tensors only a quantizer's own loader uses (a detection's ``marker_suffix``: INC's scale_bf16_to_fp8) are
    # carried, unless the target writes a plain model, whose loaders would find them unexpected.
    carries_producer_tensors: bool = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            TARGETS[cls.name] = cls()

    def for_source(self, src) -> "Target":
        """This target as it writes ``src`` (a QuantizedCheckpoint): itself, unless what it writes depends on the
        source's architecture (the dense target asks it which linears have a bias)."""
        return self

    def check_bits(self, layer: QuantLinear) -> str | None:
        return None

    def write_whole(self, plan, into: Path, layer_to_write: Callable, progress: Callable[[int], None]) -> int | None:
        """Write the whole planned output into ``into`` by the target's own means; return the bytes written.
        None: the streaming writer writes it as safetensors shards, then ``finish`` runs."""
        return None

    def finish(self, into: Path, shards: list[Path], config: dict) -> int:
        """After the streamed ``shards`` and the configs are written: turn the shards into the target's
        container, and write what its loader would make from the finished weights. Returns the bytes of
        the files it added."""
        return 0

    def prepare(self, layer: QuantLinear) -> Prepared:
        if isinstance(layer, CodebookLinear):
            return Prepared(
                layer, [],
                f"{layer.quant_type} is a 16-value code table, and {self.name} stores evenly spaced integers: no "
                f"{self.name} layer equals it (lossy); `requantize` would fit {self.name} integers to the dequantized "
                "weights and report the error per layer",
                requantizable=True,
            )
        caches = [self.cache_family] if self.cache_family else [self.companion.family] if self.companion else []
        for family in (*caches, self.family):
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
                    f"scattered act-order g_idx cannot be expressed in {self.name} (no g_idx); `requantize` would refit "
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

    def requant_recipe(self, layer, method: str) -> AffineRecipe | CodebookRecipe:
        """How ``--requantize`` refits ``layer`` for this target: contiguous groups of the source's group size
        (the blocksize for a codebook source) at the source's bits (4 from a codebook), with fp16 scales
        (what GPTQ/AWQ kernels and INC's loader use), kept on the bf16 grid for a target Gaudi computes with."""
        bits = 4 if isinstance(layer, CodebookLinear) else layer.bits
        grid = torch.bfloat16 if self.bf16_scales else None
        zero_min = 1 if self.zero_point_convention == ZP_V1 and self.v1_zero_point_zero == "refuse" else 0
        return AffineRecipe(bits, min(layer.group_size, layer.in_features), torch.float16, grid, zero_min, method)

    def encode(self, layer) -> tuple[dict[str, "torch.Tensor"], dict | None]:
        """``layer`` as the target's named tensors, and what writing it lost, measured as it was encoded (None:
        nothing; the dense target's rounding to 16 bits). Every other target's losses are known when planning."""
        return self.family.encode(layer, self.zero_point_convention), None

    def output_config(self, config: dict) -> dict:
        """The output's config.json from the source's, its quantization_config already set or removed."""
        return config

    def byte_route(self, layer: ScannedLayer, source_family: str, source_convention: str) -> ByteRoute | None:
        """How to write ``layer`` (scanned with numpy, not read) by moving bytes alone; None when the plan
        must read it with torch, and :meth:`prepare` and the encoder decide. A route exists only where
        prepare would accept the layer unchanged but for what the route's ``changes`` say, and the encoder
        would write exactly these bytes."""
        return None

    def quantization_config(self, summary: ModelQuantSummary) -> dict | None:
        raise TypeError(f"target {self.name} does not define a config")

    def config_files(self, qc: dict | None, summary: ModelQuantSummary) -> dict[str, dict]:
        """Extra JSON files (beside config.json) that this target's tools read."""
        return {}


def gptq_layout_route(target: Target, layer: ScannedLayer, source_family: str, source_convention: str) -> ByteRoute | None:
    """A plain 4-bit GPTQ layer into a GPTQ-layout target (gptq, gptq-v2, inc-hf): codes, scales and bias
    copied, zero-point fields shifted between v1 and v2, and the g_idx that AutoGPTQ always writes."""
    if not plain_gptq4(layer, source_family, source_convention) or target.companion or target.bf16_scales:
        return None
    if target.loader_scale_dtype and TORCH_NAMES.get(layer.scales_dtype) != target.loader_scale_dtype:
        return None  # the loader casts these scales: prepare measures the change and the plan warns
    changes = []
    if target.zero_point_convention == ZP_V1 and layer.zero_point_zeros:
        if target.v1_zero_point_zero == "refuse":
            return None  # prepare refuses it, naming the groups
        changes.append(f"{layer.zero_point_zeros} zero points of 0 stored as all-ones fields (INC's modular v1)")
    p, g, out = layer.name, layer.num_groups, layer.out_features
    delta = zero_point_delta(source_convention, target.zero_point_convention)
    if layer.g_idx_dtype == "I32":
        g_idx: TensorOp = Copy(f"{p}.g_idx")
    else:  # int64 (its values fit int32: the scan checked their range) or absent (AutoGPTQ writes one)
        g_idx = Small(np.arange(layer.in_features, dtype=np.int32) // np.int32(layer.group_size))
    specs = [TensorSpec(f"{p}.qweight", "I32", (layer.in_features // 8, out)), TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)),
             TensorSpec(f"{p}.scales", layer.scales_dtype, (g, out)), TensorSpec(f"{p}.g_idx", "I32", (layer.in_features,))]
    ops = {f"{p}.qweight": Copy(f"{p}.qweight"), f"{p}.qzeros": ShiftFields(f"{p}.qzeros", 4, delta) if delta else Copy(f"{p}.qzeros"),
           f"{p}.scales": Copy(f"{p}.scales"), f"{p}.g_idx": g_idx}
    return ByteRoute(*with_bias(layer, specs, ops), changes)


def with_bias(layer: ScannedLayer, specs: list[TensorSpec], ops: dict[str, TensorOp]) -> tuple[list[TensorSpec], dict[str, TensorOp]]:
    """A routed layer's tensors plus its bias, copied as it is, last (where the encoders put it)."""
    if layer.bias_dtype is not None:
        name = f"{layer.name}.bias"
        specs, ops = [*specs, TensorSpec(name, layer.bias_dtype, (layer.out_features,))], {**ops, name: Copy(name)}
    return specs, ops
