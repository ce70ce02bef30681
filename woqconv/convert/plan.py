"""Plan a conversion before writing anything: every layer checked, every output tensor placed.

A plan is complete when it knows, for each output shard, every tensor it will hold (name, dtype,
shape) and where each comes from. Refusals are collected over the whole model first, so the user
learns about every layer that cannot be converted in one message, and nothing has been written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoint import CONFIG_NAME, QUANT_CONFIG_FILES
from ..errors import RefusedConversion
from ..formats import TARGETS, Target
from ..formats.base import ZP_V1
from ..formats.targets import ModelQuantSummary, Prepared
from ..ir import GIdxKind
from ..safetensors_io import TensorSpec
from ..source import QuantizedCheckpoint


@dataclass
class ShardPlan:
    name: str
    metadata: dict[str, str]
    passthrough: list[str] = field(default_factory=list)  # source tensors copied byte for byte
    layers: list[str] = field(default_factory=list)  # quantized layers re-encoded into this shard
    specs: list[TensorSpec] = field(default_factory=list)


@dataclass
class ConversionPlan:
    source: QuantizedCheckpoint
    target: Target
    shards: list[ShardPlan]
    prepared: dict[str, Prepared]
    owned: dict[str, str]  # source tensor -> quantized layer that consumes it
    config: dict | None  # new config.json, None when the source had none
    quantization_config: dict
    extra_json: dict[str, dict]
    copied_files: list[str]
    dropped_files: list[str]

    @property
    def layer_changes(self) -> dict[str, list[str]]:
        return {name: p.changes for name, p in self.prepared.items() if p.changes}

    @property
    def sharded(self) -> bool:
        return self.source.ckpt.index is not None


def _refusal_message(target: Target, refused: dict[str, Prepared]) -> str:
    names = sorted(refused)
    zp0 = {n: refused[n].zero_point_zero_groups for n in names if refused[n].zero_point_zero_groups}
    if zp0 and len(zp0) == len(refused) and target.zero_point_convention == ZP_V1:
        listed = ", ".join(f"{n} ({k})" for n, k in list(zp0.items())[:3])
        more = f" and {len(zp0) - 3} more" if len(zp0) > 3 else ""
        return (
            f"GPTQ v1 cannot store zero point 0 (it stores z-1): {sum(zp0.values())} groups in {len(zp0)} layers "
            f"have z = 0: {listed}{more}. Use --to gptq-v2, which stores zero points as they are"
        )
    first = names[0]
    more = f" (and {len(names) - 1} more layers)" if len(names) > 1 else ""
    return f"cannot convert to {target.name} without loss: {first}: {refused[first].refusal}{more}"


def _unquantized_linears(src: QuantizedCheckpoint, owned: dict[str, str]) -> list[str]:
    names = []
    for t in src.ckpt.tensor_names:
        if t in owned or not t.endswith(".weight") or len(src.ckpt.info(t).shape) != 2:
            continue
        module = t[: -len(".weight")]
        if "embed" in module or module.endswith("wte") or module.endswith("wpe"):
            continue
        names.append(module.rsplit(".", 1)[-1] if module.endswith("lm_head") else module)
    return sorted(set(names))


def plan_conversion(src: QuantizedCheckpoint, to: str) -> ConversionPlan:
    if to not in TARGETS:
        raise RefusedConversion(f"unknown target {to!r} (choose from {', '.join(TARGETS)})")
    target = TARGETS[to]
    bits = {layer.bits for layer in src.layers}
    if len(bits) > 1:
        raise RefusedConversion(f"layers mix {sorted(bits)} bits; mixed precision is not supported yet", file=src.root)

    prepared = {layer.name: target.prepare(layer) for layer in src.layers}
    refused = {n: p for n, p in prepared.items() if p.refusal}
    if refused:
        raise RefusedConversion(_refusal_message(target, refused), file=src.root)

    owned = src.owned_tensors()
    ckpt = src.ckpt
    shards: dict[str, ShardPlan] = {
        name: ShardPlan(name, dict(f.metadata) or {"format": "pt"}) for name, f in sorted(ckpt.shards.items())
    }
    for t in ckpt.tensor_names:
        if t not in owned:
            shard = shards[ckpt.locations[t]]
            shard.passthrough.append(t)
            info = ckpt.info(t)
            shard.specs.append(TensorSpec(t, info.dtype, info.shape))
    for name, p in prepared.items():
        shard = shards[ckpt.locations[f"{name}.qweight"]]
        shard.layers.append(name)
        shard.specs.extend(target.family.specs(p.layer))
    out_names = [s.name for sh in shards.values() for s in sh.specs]
    if len(out_names) != len(set(out_names)):
        dup = sorted({n for n in out_names if out_names.count(n) > 1})[0]
        raise RefusedConversion(f"output tensor {dup} would be written twice (a passthrough tensor collides with a converted one)", file=src.root)

    kinds = {p.layer.g_idx_kind for p in prepared.values()}
    summary = ModelQuantSummary(
        bits=next(iter(bits)),
        group_size=src.format.group_size,
        sym=all(p.layer.is_symmetric for p in prepared.values()),
        desc_act=bool(kinds & {GIdxKind.BLOCK_UNIFORM, GIdxKind.SCATTERED}),
        declared=src.format.declared_config,
        unquantized_linears=_unquantized_linears(src, owned),
    )
    qc = target.quantization_config(summary)
    config = None
    if (ckpt.root / CONFIG_NAME).exists():
        config = dict(ckpt.config)
        config["quantization_config"] = qc
    extra = target.config_files(qc)
    replaced = {CONFIG_NAME, *QUANT_CONFIG_FILES, *extra}
    copied = [f for f in ckpt.other_files if f not in replaced]
    dropped = [f for f in ckpt.other_files if f in QUANT_CONFIG_FILES and f not in extra]
    return ConversionPlan(src, target, list(shards.values()), prepared, owned, config, qc, extra, copied, dropped)
