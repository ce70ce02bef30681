"""Intel Neural Compressor (INC 3.x, torch): the "default" and "huggingface" formats and the HPU layout.

INC's optimum-format modules store the GPTQ v1 layout (FORMATS.md 3.1), so reading and writing the
tensors reuses the GPTQ family; INC reads v1 zero points modularly, so z = 0 is stored as an
all-ones field and read back as 0. What is INC's own:

* "default" format: ``qconfig.json`` (one entry per module: ``"('name', 'Linear')": {algo: {...}}``)
  and ``quantized_weight.pt`` (``torch.save`` of the whole state dict).
* "huggingface" format: GPTQ v1 safetensors with ``quant_method: gptq`` (read by the GPTQ family).
* HPU layout (``HPUWeightOnlyLinear``, FORMATS.md 3.5), the cache INC writes on a Gaudi load:
  qweight int32 [in, out/8] with 8 sequential nibbles along out, qzeros int32 [G, out/8] raw zero
  points packed the same way, scales bf16 [G, out], scale_bf16_to_fp8 bf16 [1], optional g_idx.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..kernels import packing
from .._lazy import torch
from ..io.checkpoint import INC_SHARD_INDEX, INC_WEIGHTS, Checkpoint, read_json
from ..errors import FormatError
from ..ir import GIdxKind, PackedCodes, QuantLinear
from ..io.safetensors_io import TensorSpec
from . import detect, inc_codebook
from .inc_container import safetensors_to_torch_save
from .base import (
    Detection,
    ZP_V1,
    ZP_V2,
    LayerFamily,
    SourceFormat,
    expect_dtype,
    packed_source_words,
    layer_error,
    require,
    spec_of,
    validated,
)
from .base import effective_group_size
from ..engines import gaudi_verdict, loads, refuses
from .gptq import GptqFamily, GptqTarget, gptq_engines, valid_damp
from .targets import TRANSFORMERS_LOAD, Companion, ModelQuantSummary, Target, neural_compressor_load

QCONFIG = "qconfig.json"
HPU_WEIGHT_NAME = "quantized_hpu_weight.pt"  # INC's default-format Gaudi cache: neural_compressor/torch/utils/utility.py:57
# A Hub repo's files this format reads: INC's default format (torch.save'd weights, or safetensors shards and
# their index) and its qconfig.json.
HUB_FILE_PATTERNS = (INC_WEIGHTS, INC_SHARD_INDEX, QCONFIG)
PRODUCER = "neural-compressor"
_KEY = re.compile(r"^\('(?P<name>[^']+)', '(?P<type>[^']+)'\)$")
# What INC's loader reads from a per-module entry (save_load.py _replace_woqlinear_modules).
INT_DTYPES = ("int", "int4", "int8", "uint4")


def parse_qconfig(ckpt: Checkpoint, dtypes: tuple[str, ...] = INT_DTYPES) -> dict[str, tuple[str, dict]]:
    """qconfig.json -> {module name: (algorithm, entry)} for every module INC quantized to one of ``dtypes``
    (integers by default; the codebook dtypes for nf4/fp4 checkpoints)."""
    path = ckpt.root / QCONFIG
    raw = read_json(path)
    modules: dict[str, tuple[str, dict]] = {}
    for key, value in raw.items():
        m = _KEY.match(key)
        if not m:
            try:
                name, _type = ast.literal_eval(key)  # tolerate other quoting of the same tuple
            except (ValueError, SyntaxError, TypeError):
                raise FormatError(f"entry key {key!r} is not a (module name, module type) pair", file=path) from None
        else:
            name = m["name"]
        if not isinstance(value, dict) or len(value) != 1 or not isinstance(next(iter(value.values())), dict):
            raise FormatError(f"entry for {name!r} must map one algorithm name to its config", file=path)
        algo, entry = next(iter(value.items()))
        if str(entry.get("dtype", "int")) in dtypes:
            modules[name] = (algo, entry)
    return modules


def _layer_prefix(ckpt: Checkpoint, module: str) -> str | None:
    """INC stores a plain module as ``name.qweight`` and a MulLinear-wrapped one as ``name.linear.qweight``."""
    for prefix in (module, f"{module}.linear"):
        if ckpt.has(f"{prefix}.qweight"):
            return prefix
    return None


def is_default_format(ckpt: Checkpoint) -> bool:
    """INC's default format: its torch.save'd weights, or its qconfig.json with no quantization_config beside it."""
    return ckpt.container == "inc-pt" or ((ckpt.root / QCONFIG).exists() and not isinstance(ckpt.config.get("quantization_config"), dict))


class IncHpuCacheDetection(Detection):
    """Only INC's Gaudi cache is read (``hpu_model.safetensors``, ``quantized_hpu_weight.pt``): the config it
    was made from (qconfig.json for INC's default format, config.json otherwise) still gives bits and
    groups; the layout is the HPU one."""

    @classmethod
    def claims(cls, ckpt: Checkpoint) -> bool:
        return ckpt.container == "hpu-cache"

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> SourceFormat:
        fmt = detect_default(ckpt, layout_check=False) if is_default_format(ckpt) else detect.from_config(ckpt)
        return replace(fmt, name="hpu", family="hpu", zero_point_convention=ZP_V2, producer=PRODUCER)

    @classmethod
    def source_loader(cls, src) -> str:
        return "dense"  # INC loads its Gaudi cache only on Gaudi: the dense reference stands in


class IncDefaultDetection(Detection):
    """INC's default format (qconfig.json per module); INC's huggingface format is GPTQ, and its per-layer
    ``scale_bf16_to_fp8`` tensors name INC as the producer."""

    marker_suffix = ".scale_bf16_to_fp8"
    producer = PRODUCER
    producer_loader = "inc"  # INC's huggingface format: INC's own load()
    hub_files = HUB_FILE_PATTERNS
    engine_declarations = {
        # nf4 / fp4 tables: INC's CPU load reads them; its Gaudi module is uint4 only.
        **dict.fromkeys(("inc-nf4", "inc-fp4"), lambda facts: {
            "transformers": refuses("INC's default format has no quantization_config: only INC's load(..., original_model=...) reads it"),
            "inc-cpu": loads('load(path, format="default", original_model=model)'),
            "inc-gaudi": refuses("INC's Gaudi module takes uint4 codes only, not a 16-value table")}),
        "inc-nonopt": lambda facts: {
            "transformers": refuses("INC's default format has no quantization_config: only INC's load(..., original_model=...) reads it"),
            "inc-cpu": loads('load(path, format="default", original_model=model)'),
            "inc-gaudi": refuses("INC's Gaudi load repacks its optimum layout, not this older one")},
    }

    @classmethod
    def wrapped_modules(cls, ckpt: Checkpoint) -> list[str]:
        """Modules INC wrapped in MulLinear (AWQ/TEQ scales it could not fold): they carry ``input_scale``."""
        return sorted(n[: -len(".input_scale")] for n in ckpt.locations if n.endswith(".input_scale"))

    @classmethod
    def wrapper_refusal(cls, wrapped: list[str], to: str) -> str:
        return (f"{len(wrapped)} modules are INC MulLinear wrappers whose input_scale ({wrapped[0]}.input_scale, ...) "
                f"{to} cannot hold: folding it into the previous layer is a model rewrite woqconv does not do; convert to inc")

    @classmethod
    def source_loader(cls, src) -> str:
        fmt = src.format
        if fmt.family == "inc-codebook":
            return "inc-default"  # INC reloads its nf4/fp4 default format
        entries = [next(iter(e.values())) for e in fmt.declared_config.get("qconfig", {}).values()]
        if fmt.name == "inc-nonopt" or (src.g_idx_kind.value in ("block-uniform", "scattered") and not any(e.get("desc_act") for e in entries)):
            return "dense"  # INC cannot reload these (non-optimum) or drops their g_idx (act_order without desc_act)
        return "inc-default"

    @classmethod
    def claims(cls, ckpt: Checkpoint) -> bool:
        return is_default_format(ckpt)

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> SourceFormat:
        fmt = detect_default(ckpt)
        detect.check_layout(ckpt, fmt)
        return fmt


def detect_default(ckpt: Checkpoint, *, layout_check: bool = True) -> SourceFormat:
    """An INC "default" checkpoint: the per-module qconfig.json decides bits, groups and symmetry.

    ``layout_check=False`` skips telling INC's optimum from non-optimum layouts (an HPU cache is neither).
    """
    modules = parse_qconfig(ckpt)
    path = ckpt.root / QCONFIG
    codebook = parse_qconfig(ckpt, tuple(inc_codebook.TABLES))
    if modules and codebook:
        raise FormatError(f"mixes integer and {'/'.join(sorted({str(e.get('dtype')) for _, e in codebook.values()}))} modules; "
                          "not supported", file=path)
    if codebook:
        return _detect_codebook(ckpt, codebook, path)
    if not modules:
        raise FormatError("names no integer-quantized module", file=path)
    for module in modules:
        if _layer_prefix(ckpt, module) is None:
            raise FormatError(f"names module {module!r}, but the weights have no {module}.qweight", file=path)
    for module, (_, e) in modules.items():
        bits, gs = e.get("bits", 4), e.get("group_size", 32)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
            raise FormatError(f"entry for {module!r}: bits {bits!r} is not supported (2..8)", file=path)
        if not isinstance(gs, int) or isinstance(gs, bool) or gs == 0 or gs < -1:
            raise FormatError(f"entry for {module!r}: group_size {gs!r} is invalid (positive, or -1 for one group per row)", file=path)
    settings = {(e.get("bits", 4), e.get("group_size", 32), bool(e.get("use_sym", True))) for _, e in modules.values()}
    # Mixed precision: INC's loader builds each module from its own entry, so each entry's bits and group
    # size hold for its layer; the most common pair is the model-level one and the others are overrides.
    per_module = {m: (e.get("bits", 4), e.get("group_size", 32)) for m, (_, e) in modules.items()}
    (bits, group_size), _ = Counter(per_module.values()).most_common(1)[0]
    overrides = {_layer_prefix(ckpt, m): {"bits": b, "group_size": g} for m, (b, g) in per_module.items() if (b, g) != (bits, group_size)}
    algos = sorted({a for a, _ in modules.values()})
    first_algo = next(iter(modules.values()))[0]
    act_order = any(bool(e.get("act_order") or e.get("desc_act")) for _, e in modules.values())
    declared = {"qconfig": {m: {a: e} for m, (a, e) in modules.items()}, "first_algorithm": first_algo}
    # qconfig.json does not say which of INC's layouts the tensors use (use_optimum_format is not
    # recorded): the shapes and dtypes of the quantized layers decide. The optimum layout (GPTQ v1,
    # INC's default) is read unless some layer is unmistakably in the use_optimum_format=False layout
    # (qweight not int32, or scales [out, G]); a checkpoint mixing the two is refused.
    name, family, convention = "inc", "gptq", ZP_V1
    nonopt = LayerFamily.registry.get("inc-nonopt")
    if nonopt is not None and layout_check:
        prefixes = nonopt.layer_prefixes(ckpt)
        layouts = nonopt.classify(ckpt, prefixes, int(bits), int(group_size))
        if layouts is not None:
            if overrides:
                raise FormatError("modules use different bits/group sizes in INC's non-optimum layout; not supported", file=path)
            name, family, convention = "inc-nonopt", "inc-nonopt", ZP_V2
            declared["inc_nonoptimum_layouts"] = {p: lay.describe() for p, lay in layouts.items()}
    return SourceFormat(
        name=name,
        family=family,
        bits=int(bits),
        group_size=int(group_size),
        sym=all(s for _, _, s in settings),
        zero_point_convention=convention,
        quant_method="inc-" + "+".join(algos),
        producer=PRODUCER,
        desc_act=act_order,
        declared_config=declared,
        config_file=QCONFIG,
        layer_overrides=overrides,
    )


def _detect_codebook(ckpt: Checkpoint, modules: dict[str, tuple[str, dict]], path) -> SourceFormat:
    for module in modules:
        if _layer_prefix(ckpt, module) is None:
            raise FormatError(f"names module {module!r}, but the weights have no {module}.qweight", file=path)
    dtype = inc_codebook.codebook_dtype([e for _, e in modules.values()], path)
    sizes = {e.get("group_size", 32) for _, e in modules.values()}
    if len(sizes) > 1:
        raise FormatError(f"modules use different group sizes {sorted(sizes)}; not supported", file=path)
    gs = sizes.pop()
    if not isinstance(gs, int) or isinstance(gs, bool) or gs == 0 or gs < -1:
        raise FormatError(f"group_size {gs!r} is invalid (positive, or -1 for one group per row)", file=path)
    algos = sorted({a for a, _ in modules.values()})
    return SourceFormat(
        name=f"inc-{inc_codebook.QUANT_TYPE[dtype]}", family=inc_codebook.KEY, bits=4, group_size=gs, sym=True,
        zero_point_convention="none", quant_method="inc-" + "+".join(algos), producer=PRODUCER,
        declared_config={"qconfig": {m: {a: e} for m, (a, e) in modules.items()}, "codebook_dtype": dtype},
        config_file=QCONFIG,
    )


class HpuFamily(LayerFamily, key="hpu"):
    """INC's HPUWeightOnlyLinear layout, the one Gaudi's ``convert_from_uint4`` reads."""

    suffixes = ("qweight", "qzeros", "scales", "g_idx", "bias", "scale_bf16_to_fp8")
    raw_zero_points = True
    encodes_packed = True
    codes_layout = (1, None)

    @classmethod
    def geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
        for suffix in ("qweight", "qzeros", "scales"):
            require(ckpt, f"{prefix}.{suffix}", suffix)
        expect_dtype(ckpt, f"{prefix}.qweight", ("I32",))
        expect_dtype(ckpt, f"{prefix}.qzeros", ("I32",))
        expect_dtype(ckpt, f"{prefix}.scales", ("BF16", "F16", "F32"))
        if fmt.bits != 4:
            raise layer_error(ckpt, prefix, "qweight", f"the HPU layout holds 4-bit codes, config says {fmt.bits} bits")
        qw, qz, sc = (ckpt.info(f"{prefix}.{s}").shape for s in ("qweight", "qzeros", "scales"))
        if len(qw) != 2 or len(qz) != 2 or len(sc) != 2:
            raise layer_error(ckpt, prefix, "qweight", f"expected 2-D qweight/qzeros/scales, got {list(qw)}, {list(qz)}, {list(sc)}")
        groups, out = sc
        in_features = qw[0]
        if qw[1] * 8 != out or qz != (groups, out // 8):
            raise layer_error(ckpt, prefix, "qweight", f"shapes {list(qw)}, {list(qz)} disagree with scales {list(sc)} in the HPU layout")
        gs = effective_group_size(fmt.group_size, in_features)
        if -(-in_features // gs) != groups:
            raise layer_error(ckpt, prefix, "scales", f"{groups} groups, but in_features {in_features} with group_size {fmt.group_size} gives {-(-in_features // gs)}")
        return in_features, out, gs

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        cls.geometry(ckpt, prefix, fmt)
        return packing.unpack(ckpt.read(f"{prefix}.qzeros"), 4, dim=1)

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        layer = QuantLinear(
            name=prefix,
            in_features=in_features,
            out_features=out,
            bits=4,
            group_size=gs,
            zeros=packing.unpack(ckpt.read(f"{prefix}.qzeros"), 4, dim=1).T.contiguous(),
            scales=ckpt.read(f"{prefix}.scales").T.contiguous(),
            g_idx=ckpt.read(f"{prefix}.g_idx").to(torch.int32) if ckpt.has(f"{prefix}.g_idx") else None,
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            layer.codes = packing.unpack(ckpt.read(f"{prefix}.qweight"), 4, dim=1).T.contiguous()
        return validated(ckpt, prefix, layer)

    @classmethod
    def packed_codes(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> PackedCodes:
        return packed_source_words(ckpt, f"{prefix}.qweight", 4, 1, None)

    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        if layer.bits != 4:
            return f"Gaudi's convert_from_uint4 takes 4-bit codes only, not {layer.bits}-bit"
        if layer.out_features % 32:
            return f"INC's HPU layout needs out_features divisible by 32, got {layer.out_features}"
        return None

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        p, g, out = layer.name, layer.num_groups, layer.out_features
        specs = [
            TensorSpec(f"{p}.qweight", "I32", (layer.in_features, out // 8)),
            TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)),
            TensorSpec(f"{p}.scales", "BF16", (g, out)),
            TensorSpec(f"{p}.scale_bf16_to_fp8", "BF16", (1,)),
        ]
        if _real_bias(layer):
            specs.append(TensorSpec(f"{p}.bias", "BF16", (out,)))
        if layer.g_idx is not None:
            specs.append(spec_of(f"{p}.g_idx", layer.g_idx))
        return specs

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        if zero_point_convention != ZP_V2:
            raise ValueError("the HPU layout stores raw zero points")
        p = layer.name
        tensors = {
            f"{p}.qweight": layer.pack_codes(dim=1),
            f"{p}.qzeros": packing.pack(layer.zeros.T, 4, dim=1),
            # HPUWeightOnlyLinear.pack casts to bf16: the one lossy step of the Gaudi route.
            f"{p}.scales": layer.scales.T.to(torch.bfloat16).contiguous(),
            f"{p}.scale_bf16_to_fp8": torch.zeros(1, dtype=torch.bfloat16),
        }
        if _real_bias(layer):
            tensors[f"{p}.bias"] = layer.bias.to(torch.bfloat16)
        if layer.g_idx is not None:
            tensors[f"{p}.g_idx"] = layer.g_idx.to(torch.int32)
        return tensors


def _real_bias(layer: QuantLinear) -> bool:
    """INC's huggingface format stores an all-zero bias on every layer, even for bias-free
    architectures; its HPU loader keeps a bias only where the architecture has one. An all-zero bias
    adds nothing, so the HPU layout carries a bias only when it holds a non-zero value."""
    return layer.bias is not None and bool(layer.bias.any())


# -- targets (in the order the CLI lists them) ----------------------------------------------------

def _inc_bits(layer: QuantLinear) -> str | None:
    # INC's packer puts floor(32/b) fields in a word: 2/4/8 bits match GPTQ's stream, 3 bits do not.
    if layer.bits not in (2, 4, 8):
        return f"INC packs {layer.bits}-bit codes {32 // layer.bits} to a word, not as GPTQ's bit stream; INC targets take 2, 4 or 8 bits"
    # INC's dequant casts (q - z) to int8 (modules.py, INCWeightOnlyLinear.recover): at 8 bits that
    # wraps unless z = 128, where q - z spans exactly [-128, 127].
    if layer.bits == 8 and not layer.is_symmetric:
        return "INC computes 8-bit weights as int8(q - z), which wraps for asymmetric zero points; use gptq or gptq-v2"
    return None


def inc_default_engines(facts) -> dict:
    """INC's default format: only INC's own load reads it, with the original model built by the user."""
    return {"transformers": refuses("INC's default format has no quantization_config: only INC's load(..., original_model=...) reads it"),
            "inc-cpu": loads('load(path, format="default", original_model=model)'),
            "inc-gaudi": gaudi_verdict(facts, cached=facts.gaudi_cache)}


class IncDefaultTarget(Target):
    name = "inc"
    family = GptqFamily
    engines = staticmethod(inc_default_engines)
    zero_point_convention = ZP_V1
    keeps_g_idx = True
    v1_zero_point_zero = "modular"
    container = "inc-pt"
    holds_wrappers = True
    per_layer_precision = True
    loader_scale_dtype = "float16"
    needs_config = False
    # Every entry is labelled awq (below), so INC's load assigns the checkpoint's unquantized tensors into
    # the user's original model, replacing its parameters with the file's dtype. fp16 or bf16 ones would
    # then meet the fp32 activations INC's CPU linears return ("mixed dtype", "m1 and m2 ... same dtype")
    # whatever dtype the user built the model in; fp32 holds every 16-bit value exactly and runs with
    # original models built in float32 or bfloat16 alike.
    carried_float_dtype = "F32"
    carried_float_reason = "so that INC's load runs with an original model in any dtype"
    description = "INC default format: qconfig.json + quantized_weight.pt for load(..., original_model=...)"
    loader = "inc-default"
    load_examples = (neural_compressor_load(
        'original_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))\n'
        'model = load(path, format="default", original_model=original_model, device="cpu")', gaudi=False, original_model=True),)

    def check_bits(self, layer):
        return _inc_bits(layer)

    def finish(self, into: Path, shards: list[Path], config: dict) -> int:
        # INC's default format is one torch.save'd state dict, built from the streamed shards.
        safetensors_to_torch_save(shards, into / INC_WEIGHTS)
        for f in shards:
            f.unlink()
        return 0

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


class IncHfTarget(GptqTarget):
    name = "inc-hf"
    engines = staticmethod(lambda facts: gptq_engines(facts, v2=False))  # GPTQ v1 with INC's config
    zero_point_convention = ZP_V1
    v1_zero_point_zero = "modular"
    loader_scale_dtype = "float16"
    # INC's huggingface loader builds every module from the model-level bits/group_size and ignores
    # GPTQModel's ``dynamic`` (a mixed checkpoint fails its state-dict load with size mismatches).
    per_layer_precision = False
    description = "INC huggingface format: GPTQ v1 safetensors that INC's load() and transformers read"
    load_examples = (
        neural_compressor_load('model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  # or device="cpu"'),
        TRANSFORMERS_LOAD,
    )

    def check_bits(self, layer):
        return _inc_bits(layer)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        # INC's change_config_to_hf_format keys, with a damp_percent transformers accepts.
        return {
            "quant_method": "gptq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            "damp_percent": valid_damp(summary.declared),
            "desc_act": summary.desc_act,
            "sym": summary.sym,
            "true_sequential": bool(summary.declared.get("true_sequential", False)),
            "model_name_or_path": None,
            "model_file_base_name": "model",
            "checkpoint_format": "gptq",
        }


class HpuTarget(IncHfTarget):
    name = "hpu"
    keeps_g_idx = False  # INC drops ordered g_idx, and older SynapseAI ignores any g_idx
    bf16_scales = True
    companion = Companion("hpu_model.safetensors", HpuFamily, ZP_V2, "BF16")
    loader = "inc-hpu"
    load_examples = (
        neural_compressor_load('model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  '
                               '# Gaudi: uses hpu_model.safetensors, no repack'),
        TRANSFORMERS_LOAD,
    )
    description = "inc-hf plus the hpu_model.safetensors cache INC's Gaudi loader reads without repacking"


def _entry_group_size(layer: QuantLinear, declared: int) -> int:
    """A qconfig.json entry's group size: the model's declared one when it is this layer's, else the layer's
    own (-1 for one group per row), so mixed group sizes survive."""
    if layer.group_size == effective_group_size(declared, layer.in_features):
        return declared
    return -1 if layer.group_size >= layer.in_features else layer.group_size
