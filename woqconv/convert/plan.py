"""Plan a conversion before writing anything: every layer checked, every output tensor placed.

A plan is complete when it knows, for each output shard, every tensor it will hold (name, dtype,
shape) and where each comes from. Refusals are collected over the whole model first, so the user
learns about every layer that cannot be converted in one message, and nothing has been written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .._lazy import torch
from ..base_model import missing_architecture
from ..io.checkpoint import CONFIG_NAME, HPU_CACHES, QUANT_CONFIG_FILES, Checkpoint
from ..compute import map_in_order, release_freed_memory
from ..errors import BadArgument, RefusedConversion
from ..extras import require
from ..formats import TARGETS, Detection, Target
from ..formats.base import ZP_V1, effective_group_size
from ..formats.targets import ByteRoute, ModelQuantSummary, Prepared, scale_cast_loss
from ..ir import CodebookLinear, GIdxKind, QuantLinear
from ..requant import METHODS, AffineRecipe, CodebookRecipe
from ..formats.scan import ScannedLayer
from ..io.safetensors_io import SafetensorsFile, TensorSpec, serialized_header
from ..source import QuantizedCheckpoint
from ..tensor_ops import Cast, Compute, Copy, TensorOp
from ..wording import counted

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass
class ShardPlan:
    name: str
    metadata: dict[str, str]
    source: str = ""  # the source shard (relative name) whose tensors this one carries or re-encodes
    passthrough: list[str] = field(default_factory=list)  # source tensors carried over (copied, or cast)
    specs: list[TensorSpec] = field(default_factory=list)
    ops: dict[str, TensorOp] = field(default_factory=dict)  # every output tensor -> how it is made
    # The quantized layers re-encoded into this shard -> their output tensors, in the encoder's order.
    outputs: dict[str, list[str]] = field(default_factory=dict)
    # The output file is the source file with a few tensors written over: same header, so every tensor
    # the plan copies under its own name already lies where it belongs. The writer copies the file whole.
    copy_whole: bool = False


@dataclass
class ConversionPlan:
    source: QuantizedCheckpoint
    target: Target
    shards: list[ShardPlan]
    prepared: dict[str, Prepared]
    owned: dict[str, str]  # source tensor -> quantized layer that consumes it
    config: dict | None  # new config.json, None when the source had none
    quantization_config: dict | None
    extra_json: dict[str, dict]
    copied_files: list[str]
    dropped_files: list[str]
    companion_specs: list[TensorSpec] = field(default_factory=list)
    companion_casts: dict[str, str] = field(default_factory=dict)  # unquantized tensor -> its source dtype, when cast
    companion_passthrough: set[str] = field(default_factory=set)  # source tensors the companion also holds
    widened: dict[str, str] = field(default_factory=dict)  # unquantized tensor -> its 16-bit source dtype, written as fp32
    warnings: list[str] = field(default_factory=list)
    dropped_tensors: list[str] = field(default_factory=list)  # producer-only tensors a plain model has no use for
    # Per requantized layer: the method and its weight error (filled while writing, or by a dry run).
    requant_stats: dict[str, dict] = field(default_factory=dict)
    # Per layer: what the target's encoder lost, measured while writing (or by a dry run): Target.encode.
    write_losses: dict[str, dict] = field(default_factory=dict)

    @property
    def requantized_layers(self) -> list[str]:
        return [name for name, p in self.prepared.items() if p.requant is not None]

    @property
    def lossy_layers(self) -> dict[str, dict]:
        return {name: p.lossy for name, p in self.prepared.items() if p.lossy}

    @property
    def layer_changes(self) -> dict[str, list[str]]:
        return {name: p.changes for name, p in self.prepared.items() if p.changes}

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1



def _refusal_message(target: Target, refused: dict[str, Prepared], total: int) -> str:
    names = sorted(refused)
    zp0 = {n: refused[n].zero_point_zero_groups for n in names if refused[n].zero_point_zero_groups}
    if zp0 and len(zp0) == len(refused) and target.zero_point_convention == ZP_V1:
        listed = ", ".join(f"{n} ({k})" for n, k in list(zp0.items())[:3])
        more = f" and {len(zp0) - 3} more" if len(zp0) > 3 else ""
        return (
            f"GPTQ v1 cannot store zero point 0 (it stores z-1): {counted(sum(zp0.values()), 'group')} in {counted(len(zp0), 'layer')} "
            f"have z = 0: {listed}{more}. Use `to=gptq-v2`, which stores zero points as they are"
        )
    # One line for any number of layers: each reason once, with the layers it holds for.
    by_reason: dict[str, list[str]] = {}
    for n in names:
        by_reason.setdefault(refused[n].refusal, []).append(n)
    parts = [f"{reason}: {_named(group, total)}" if len(group) > 1 else f"{group[0]}: {reason}"
             for reason, group in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))]
    return f"cannot convert to {target.name}: {'; '.join(parts)}"


LISTED_LAYERS = 16  # a refusal names this many layers, then counts the rest


def _named(names: list[str], total: int) -> str:
    """The layers a refusal holds for, by name: "every layer (14)", or "9 layers: a, b, ..."."""
    if len(names) == total:
        return f"every layer ({total})"
    listed = ", ".join(names[:LISTED_LAYERS]) + (f" and {len(names) - LISTED_LAYERS} more" if len(names) > LISTED_LAYERS else "")
    return f"{len(names)} layers: {listed}"


def at_base_precision(layer, base: tuple[int, int]) -> bool:
    """The layer has the model-level bits and (declared, so possibly -1) group size."""
    return layer.bits == base[0] and layer.group_size == effective_group_size(base[1], layer.in_features)


def _base_precision(src: QuantizedCheckpoint, held: set[str] | None = None) -> tuple[int, int]:
    """The model-level (bits, declared group size) a target config states: the source's own when some
    layer has it, else the most common precision (mixed checkpoints state the others per layer).
    ``held``: only the layers the target can hold count (an 8-bit majority is no base for a 4-bit-only target)."""
    declared = (src.format.bits, src.format.group_size)
    layers = [layer for layer in src.layers if held is None or layer.name in held] or src.layers
    counts = Counter((layer.bits, layer.group_size) for layer in layers)
    if any(at_base_precision(layer, declared) for layer in layers):
        return declared
    (bits, gs), _ = counts.most_common(1)[0] if counts else (declared, 0)
    return bits, gs


def precision_counts(layers) -> dict[str, list[str]]:
    """Layers by precision label ("4-bit g64 asym"), most populous first: how a mixed checkpoint is described."""
    by: dict[str, list[str]] = {}
    for layer in layers:
        by.setdefault(precision_label(layer), []).append(layer.name)
    return dict(sorted(by.items(), key=lambda kv: -len(kv[1])))


def precision_label(layer) -> str:
    """"4-bit g64 asym"; a layer with one group per row is "per-channel", whatever its width."""
    group = "per-channel" if layer.group_size >= layer.in_features else f"g{layer.group_size}"
    return f"{layer.bits}-bit {group} {'sym' if layer.is_symmetric else 'asym'}"


def _mixed_refusal(src: QuantizedCheckpoint, target: Target, refused: dict[str, Prepared], base: tuple[int, int]) -> str | None:
    """For a mixed checkpoint whose off-base layers are exactly what the target refuses: one line naming them."""
    layers = {layer.name: layer for layer in src.layers}
    if len({precision_label(layer) for layer in layers.values()}) < 2:
        return None
    other = sorted(n for n in refused if not at_base_precision(layers[n], base))
    if not other or len(other) != len(refused):
        return None
    kinds = ", ".join(f"{len(v)} {k}" for k, v in precision_counts([layers[n] for n in other]).items())
    listed = ", ".join(other[:LISTED_LAYERS]) + (f" and {len(other) - LISTED_LAYERS} more" if len(other) > LISTED_LAYERS else "")
    return (f"cannot convert to {target.name}: mixed precision, and {target.name} holds only {base[0]}-bit group size {base[1]} "
            f"here; {kinds} layers are not: {listed}")


def unquantized_linears(ckpt: Checkpoint, owned: dict[str, str]) -> list[str]:
    """The linear modules the checkpoint keeps unquantized (2-D ``.weight`` tensors no layer owns, embeddings
    aside), as the targets' configs name them."""
    names = []
    for t in ckpt.tensor_names:
        if t in owned or not t.endswith(".weight") or len(ckpt.info(t).shape) != 2:
            continue
        module = t[: -len(".weight")]
        if "embed" in module or module.endswith("wte") or module.endswith("wpe"):
            continue
        names.append(module.rsplit(".", 1)[-1] if module.endswith("lm_head") else module)
    return sorted(set(names))


def _lossy_message(target: Target, lossy: dict[str, dict], casts: dict[str, str]) -> str:
    parts = []
    if lossy:
        changed = sum(v["scales_changed"] for v in lossy.values())
        total = sum(v["scales_total"] for v in lossy.values())
        worst = max(v["max_rel_change"] for v in lossy.values())
        parts.append(f"changes {changed} of {total} scales in {counted(len(lossy), 'layer')} (largest relative change {worst:.3g})")
    if casts:
        parts.append(f"casts {len(casts)} unquantized tensors ({', '.join(sorted(set(casts.values())))}) to bf16")
    return (
        f"{target.name} holds bf16 for Gaudi, which {' and '.join(parts)}; codes and zero points stay exact. "
        "Pass `allow_bf16=True` to accept this loss"
    )


def shard_metadata(shard) -> dict[str, str]:
    """The metadata an output shard carries: its source's, or safetensors' usual ``{"format": "pt"}``."""
    return dict(shard.metadata) or {"format": "pt"}


def output_shard_names(ckpt: Checkpoint) -> dict[str, str]:
    """Output weight files keep the source's names for a standard Hugging Face layout; anything else
    (INC's torch.save file, its model_shard-* files, an HPU cache) becomes model.safetensors or
    model-0000k-of-0000n.safetensors with an index."""
    names = sorted(ckpt.shards)
    # Loaders look for model.safetensors or model.safetensors.index.json: keep the source's names only
    # when it already has that layout (INC's sharded default format names its shards otherwise).
    standard = names == ["model.safetensors"] or ckpt.index is not None
    if ckpt.container == "safetensors" and standard:
        return {n: n for n in names}
    if len(names) == 1:
        return {names[0]: "model.safetensors"}
    width = len(str(len(names)))
    return {n: f"model-{i + 1:0{width}d}-of-{len(names):0{width}d}.safetensors" for i, n in enumerate(names)}


def _skeleton(layer, recipe):
    """The requantized layer's shapes and dtypes, for planning (its values arrive while writing)."""
    if isinstance(recipe, CodebookRecipe):
        blocks = -(-layer.out_features * layer.in_features // recipe.blocksize)
        return CodebookLinear(layer.name, layer.in_features, layer.out_features, recipe.blocksize, recipe.quant_type,
                              recipe.code.clone(), torch.ones(blocks), recipe.dtype, bias=layer.bias)
    groups = -(-layer.in_features // recipe.group_size)
    # Zero points of 1: an asymmetric fit, never the z = 0 a v1 target refuses.
    return QuantLinear(layer.name, layer.in_features, layer.out_features, recipe.bits, recipe.group_size,
                       zeros=torch.ones(layer.out_features, groups, dtype=torch.uint8),
                       scales=torch.ones(layer.out_features, groups, dtype=recipe.scale_dtype), bias=layer.bias)


def _prepare(target: Target, layer, requantize: str | None) -> Prepared:
    p = target.prepare(layer)
    if not (p.refusal and p.requantizable and requantize):
        return p
    recipe = target.requant_recipe(layer, requantize)
    q = target.prepare(_skeleton(layer, recipe))
    if q.refusal:
        return q
    what = f"{recipe.quant_type} blocks of {recipe.blocksize}" if isinstance(recipe, CodebookRecipe) else (
        f"{recipe.bits}-bit groups of {recipe.group_size}")
    q.changes = [f"requantized ({requantize}) to {what}: {p.refusal.split(':')[0].split(';')[0]}"] + q.changes
    q.requant = recipe
    q.lossy = {"kind": "requantize", "method": requantize}
    return q


def _target_name(to: str) -> str:
    """A target's registered name, whatever its case ("AWQ")."""
    if not isinstance(to, str):
        raise TypeError(f"to must be a target name (str), not {type(to).__name__}")
    return to if to in TARGETS else next((name for name in TARGETS if name.lower() == to.lower()), to)


def plan_conversion(src: QuantizedCheckpoint, to: str, *, allow_bf16: bool = False, requantize: str | None = None,
                    double_quant: bool = False, dtype: str | None = None, workers: int = 1) -> ConversionPlan:
    """Plan ``src`` -> ``to``. ``requantize`` ("search" or "minmax") lets layers that no lossless path
    reaches be refitted; ``double_quant`` stores bitsandbytes absmax double-quantized (nf4/fp4 only);
    ``dtype`` is the weights' dtype for a target that takes one (dense); ``workers`` layers are prepared at
    once, in threads."""
    to = _target_name(to)
    if to not in TARGETS:
        raise BadArgument(f"unknown target {to!r} (choose from {', '.join(TARGETS)})")
    if requantize is not None and requantize not in METHODS:
        raise BadArgument(f"requantization method must be one of {', '.join(METHODS)}, not {requantize!r}")
    target = TARGETS[to]
    if double_quant:
        holders = [name for name, t in TARGETS.items() if t.double_quant_option]
        if not target.double_quant_option:
            raise BadArgument(f"double quantization is a bitsandbytes option; {to} has none (use {' or '.join(f'`to={h}`' for h in holders)})")
        target = target.configured(double_quant=True)
    if dtype is not None:
        takers = [name for name, t in TARGETS.items() if t.dtype_option]
        if not target.dtype_option:
            raise BadArgument(f"a weights dtype is an option of {', '.join(takers)}; {to} keeps the source's integers and scales "
                              f"(use {' or '.join(f'`to={n}`' for n in takers)})")
        choices = target.dtype_choices
        if dtype not in choices:
            raise BadArgument(f"dtype must be one of {', '.join(choices)}, not {dtype!r}")
        target = target.configured(dtype=dtype)

    for module, extra in target.needs:
        require(module, extra, f"the {to} target")
    ckpt = src.ckpt
    if target.needs_config and not ckpt.has_config:
        raise RefusedConversion(missing_architecture(src.root, to), file=src.root)
    target = target.for_source(src)
    wrapped = []
    for detection in Detection.registry:
        if wrapped := detection.wrapped_modules(ckpt):
            if not target.holds_wrappers:
                raise RefusedConversion(detection.wrapper_refusal(wrapped, to), file=src.root)
            break
    # Layers the family's numpy pass described and the target can take by moving bytes: no torch.
    routed = _byte_routes(src, target)
    # Every other layer's small tensors are read (and validated), prepared, and released: the plan keeps
    # shells (shapes, dtypes, what changed and what it costs), and the writer reads the values once
    # more. A source opened without its layers gets their shells from this same read.
    need_shells = not src.has_shells

    def prepare(name: str) -> tuple[Prepared, dict | None, object]:
        layer = src.read_layer(name, codes=False)
        shell = layer.shell() if need_shells else None
        p = _prepare(target, layer, requantize)
        loss = None
        if target.loader_scale_dtype is not None and not p.refusal:
            loss = scale_cast_loss(p.layer.scales, getattr(torch, target.loader_scale_dtype))
        p.layer = p.layer.shell()
        del layer
        release_freed_memory()
        return p, loss, shell

    names = src.layer_names
    read = [n for n in names if n not in routed]
    found: dict[str, Prepared] = {}
    cast_losses: dict[str, dict] = {}
    shells = {}
    for name, (p, loss, shell) in zip(read, map_in_order(prepare, read, workers)):
        found[name] = p
        shells[name] = shell
        if loss:
            cast_losses[name] = loss
    for name, (layer, route) in routed.items():
        found[name] = Prepared(layer, route.changes, zero_point_zero_groups=layer.zero_point_zeros)
        shells[name] = layer
    prepared = {name: found[name] for name in names}
    if need_shells:
        src.adopt_shells([shells[name] for name in names])
    base = _base_precision(src)
    if not target.per_layer_precision:
        check_base = _base_precision(src, held={n for n, p in prepared.items() if not p.refusal})
        for name, p in prepared.items():
            if not p.refusal and p.requant is None and not at_base_precision(p.layer, check_base):
                p.refusal = (f"{target.name} states one precision per checkpoint ({check_base[0]}-bit, group size "
                             f"{check_base[1]}), not {precision_label(p.layer)}")
    else:
        check_base = base
    refused = {n: p for n, p in prepared.items() if p.refusal}
    if refused:
        raise RefusedConversion(_mixed_refusal(src, target, refused, check_base) or _refusal_message(target, refused, len(prepared)),
                                file=src.root)

    owned = src.owned_tensors()
    out_names = output_shard_names(ckpt)
    shards: dict[str, ShardPlan] = {
        name: ShardPlan(out_names[name], shard_metadata(f), source=name) for name, f in sorted(ckpt.shards.items())
    }
    widened: dict[str, str] = {}
    markers = () if target.carries_producer_tensors else tuple(d.marker_suffix for d in Detection.registry if d.marker_suffix)
    dropped_tensors = [t for t in ckpt.tensor_names if t not in owned and markers and t.endswith(markers)]
    left_out = set(dropped_tensors)
    for t in ckpt.tensor_names:
        if t not in owned and t not in left_out:
            shard = shards[ckpt.locations[t]]
            shard.passthrough.append(t)
            info = ckpt.info(t)
            dtype = info.dtype
            # INC's per-layer scale_bf16_to_fp8 is bf16 in INC's own modules, and stays so.
            if target.carried_float_dtype and dtype in ("F16", "BF16") and not t.endswith(".scale_bf16_to_fp8"):
                widened[t], dtype = dtype, target.carried_float_dtype
            shard.specs.append(TensorSpec(t, dtype, info.shape))
            shard.ops[t] = Cast(t, dtype) if t in widened else Copy(t)
    for name, p in prepared.items():
        shard = shards[ckpt.locations[src.family.owned_tensors(ckpt, name)[0]]]
        if name in routed:
            specs, ops = routed[name][1].specs, routed[name][1].ops
        else:
            specs = target.family.specs(p.layer)
            ops = _computed_ops(src, target, p, specs)
        shard.specs.extend(specs)
        shard.ops.update(ops)
        shard.outputs[name] = [spec.name for spec in specs]
    out_names = [s.name for sh in shards.values() for s in sh.specs]
    if len(out_names) != len(set(out_names)):
        dup = sorted({n for n in out_names if out_names.count(n) > 1})[0]
        raise RefusedConversion(f"output tensor {dup} would be written twice (a passthrough tensor collides with a converted one)", file=src.root)

    for shard in shards.values():
        shard.copy_whole = _copies_whole(ckpt, target, shard)

    if target.default_hpu_cache and ckpt.config.get("tie_word_embeddings") and not ckpt.has("lm_head.weight"):
        # INC's cache would hold the original model's own lm_head, in whatever dtype the user loads it.
        raise RefusedConversion(f"tied embeddings without lm_head.weight in the checkpoint: the {target.default_hpu_cache} INC writes then "
                                "depends on the dtype the original model is loaded in; convert to inc, and INC writes the cache on its first "
                                "Gaudi load", file=src.root)
    companion_specs: list[TensorSpec] = []
    casts: dict[str, str] = {}
    companion_passthrough: set[str] = set()
    if target.companion:
        companion_specs, casts, companion_passthrough = _companion_specs(src, target, prepared, owned)

    bf16 = {n: p.lossy for n, p in prepared.items() if p.lossy and p.lossy["kind"] == "bf16"}
    if (bf16 or casts) and not allow_bf16:
        raise RefusedConversion(_lossy_message(target, bf16, casts), file=src.root)

    warnings = _loader_cast_warnings(target, cast_losses)
    if allow_bf16 and not target.bf16_scales:
        warnings.append(f"`allow_bf16=True` changes nothing here: {target.name} casts nothing to bf16 (the hpu targets do)")
    kinds = {p.layer.g_idx_kind for p in prepared.values()}
    requant_groups = {p.requant.group_size for p in prepared.values() if isinstance(p.requant, AffineRecipe)}
    at_base = [p for p in prepared.values() if at_base_precision(p.layer, base)]
    summary = ModelQuantSummary(
        bits=base[0],
        group_size=requant_groups.pop() if len(requant_groups) == 1 else base[1],
        sym=bool(at_base) and all(p.layer.is_symmetric and p.requant is None for p in at_base),
        desc_act=bool(kinds & {GIdxKind.BLOCK_UNIFORM, GIdxKind.SCATTERED}),
        declared=src.format.declared_config,
        unquantized_linears=unquantized_linears(ckpt, owned),
        layers=[p.layer for p in prepared.values()],
        wrapped_modules=wrapped,
    )
    qc = target.quantization_config(summary)
    config, extra, copied, dropped = output_configs(ckpt, target, qc, summary)
    return ConversionPlan(
        src, target, list(shards.values()), prepared, owned, config, qc, extra, copied, dropped, companion_specs, casts,
        companion_passthrough, widened, warnings, dropped_tensors=dropped_tensors,
    )


def _byte_routes(src: QuantizedCheckpoint, target: Target) -> dict[str, tuple[ScannedLayer, ByteRoute]]:
    """The layers the target takes by moving bytes (Target.byte_route), from the source's numpy scan: each
    with its shell, read with the convention the source settled on."""
    fmt = src.format
    routed = {}
    for name in src.scans:
        layer = src.scanned_shell(name)
        route = target.byte_route(layer, fmt.family, fmt.zero_point_convention)
        if route is not None:
            routed[name] = (layer, route)
    return routed


def _computed_ops(src: QuantizedCheckpoint, target: Target, p: Prepared, specs: list[TensorSpec]) -> dict[str, TensorOp]:
    """A layer the target's encoder writes: every tensor computed, except codes the target packs exactly as
    the source does, which are copied unread."""
    ops: dict[str, TensorOp] = {spec.name: Compute(p.layer.name) for spec in specs}
    codes = f"{p.layer.name}.qweight"
    layout = src.family.codes_layout
    if (p.requant is None and layout is not None and layout == target.family.codes_layout and codes in ops
            and src.ckpt.has(codes) and src.ckpt.info(codes).shape == next(s.shape for s in specs if s.name == codes)):
        ops[codes] = Copy(codes)
    return ops


def _copies_whole(ckpt: Checkpoint, target: Target, shard: ShardPlan) -> bool:
    """Whether the writer should copy the source shard whole and write over the rest: the output header is
    the source's (so every tensor copied under its own name is already in place) and those copies are most
    of the bytes. Not beside a companion file, whose per-layer re-layouts overlap per-layer copies instead
    (7B hpu, 3 interleaved pairs: 14.9-27.6 s with a whole copy first, 12.7-21.8 s without)."""
    source = ckpt.shards.get(shard.source)
    if target.container != "safetensors" or target.companion is not None or not isinstance(source, SafetensorsFile):
        return False
    kept = sum(spec.nbytes for spec in shard.specs if shard.ops[spec.name] == Copy(spec.name))
    if kept * 2 <= sum(spec.nbytes for spec in shard.specs):
        return False
    return serialized_header(shard.specs, shard.metadata)[0] == source.header_bytes()


def output_configs(ckpt: Checkpoint, target: Target, qc: dict | None, summary: ModelQuantSummary):
    """The output's config.json (None without one in the source), the target's extra config files, and
    the source's other files copied and dropped (its quantization configs and Gaudi caches)."""
    config = None
    if ckpt.has_config:
        config = dict(ckpt.config)
        if qc is None:
            config.pop("quantization_config", None)  # INC default, dense: config.json describes the base model
        else:
            config["quantization_config"] = qc
        config = target.output_config(config)
    extra = target.config_files(qc, summary)
    replaced = {CONFIG_NAME, *QUANT_CONFIG_FILES, *HPU_CACHES, *extra}
    copied = [f for f in ckpt.other_files if f not in replaced]
    dropped = [f for f in ckpt.other_files if f in replaced and f not in extra and f != CONFIG_NAME]
    return config, extra, copied, dropped


def _loader_cast_warnings(target: Target, losses: dict[str, dict]) -> list[str]:
    """What the target's loader does to the scales the file keeps exactly (per layer, from planning)."""
    if not losses:
        return []
    changed = sum(v["scales_changed"] for v in losses.values())
    total = sum(v["scales_total"] for v in losses.values())
    worst = max(v["max_rel_change"] for v in losses.values())
    dtype = target.loader_scale_dtype
    return [
        f"the file keeps the scales exactly, but INC's loader casts them to {dtype}: {changed} of {total} scales in "
        f"{counted(len(losses), 'layer')} change{'s' if len(losses) == 1 else ''} when loaded (largest relative change {worst:.3g})"
    ]


def _companion_specs(src: QuantizedCheckpoint, target: Target, prepared: dict[str, Prepared], owned: dict[str, str]):
    """The companion file (INC's hpu_model.safetensors) holds the whole state dict as INC's Gaudi loader
    saves it: quantized layers in the companion family, every other float tensor cast to its dtype."""
    ckpt, comp = src.ckpt, target.companion
    specs: list[TensorSpec] = []
    casts: dict[str, str] = {}
    tied = bool(ckpt.config.get("tie_word_embeddings", False))
    layer_specs = [spec for p in prepared.values() for spec in comp.family.specs(p.layer)]
    from_layers = {spec.name for spec in layer_specs}
    for t in ckpt.tensor_names:
        # Tensors the companion layout generates per layer (INC's scale_bf16_to_fp8) come from the layer;
        # INC drops tied weights from its cache.
        if t in owned or t in from_layers or (tied and t == "lm_head.weight"):
            continue
        info = ckpt.info(t)
        dtype = info.dtype
        if dtype in FLOAT_DTYPES and dtype != comp.float_dtype:
            casts[t] = dtype
            dtype = comp.float_dtype
        specs.append(TensorSpec(t, dtype, info.shape))
    return specs + layer_specs, casts, {s.name for s in specs}
