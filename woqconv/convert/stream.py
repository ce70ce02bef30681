"""Execute a plan: stream tensors shard by shard, one quantized layer resident at a time."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..checkpoint import CONFIG_NAME, INC_WEIGHTS, INDEX_NAME, dump_json
from ..errors import FormatError
from ..safetensors_io import DTYPES, SafetensorsWriter
from .inc_container import safetensors_to_torch_save
from ..requant import requantize
from .plan import ConversionPlan

Progress = Callable[[int], None]  # called with bytes of source data consumed since the last call


def write_plan(plan: ConversionPlan, into: Path, progress: Progress | None = None) -> int:
    """Write every planned file into the (empty) directory ``into``; return bytes written."""
    src = plan.source
    ckpt = src.ckpt
    target = plan.target
    tick = progress or (lambda n: None)
    weight_map: dict[str, str] = {}
    comp = target.companion
    companion = SafetensorsWriter(into / comp.file, plan.companion_specs, {"format": "pt"}) if comp else None
    written_files: list[Path] = []
    try:
        for shard in plan.shards:
            writer = SafetensorsWriter(into / shard.name, shard.specs, shard.metadata)
            try:
                for t in shard.passthrough:
                    source_file = ckpt.shards[ckpt.locations[t]]
                    writer.copy_from(t, source_file)
                    weight_map[t] = shard.name
                    if companion and t in plan.companion_passthrough:
                        if t in plan.companion_casts:
                            companion.write(t, source_file.read(t).to(DTYPES[comp.float_dtype]))
                        else:
                            companion.copy_from(t, source_file)
                    tick(ckpt.info(t).nbytes)
                for name in shard.layers:
                    layer = src.read_layer(name)
                    recipe = plan.prepared[name].requant
                    if recipe is not None:
                        layer, plan.requant_stats[name] = requantize(layer, recipe)
                    prepared = target.prepare(layer)
                    if prepared.refusal:  # the data changed between planning and writing
                        raise FormatError(f"layer changed since planning: {prepared.refusal}", file=ckpt.root, tensor=name)
                    for tname, tensor in target.family.encode(prepared.layer, target.zero_point_convention).items():
                        writer.write(tname, tensor)
                        weight_map[tname] = shard.name
                    if companion:
                        for tname, tensor in comp.family.encode(prepared.layer, comp.zero_point_convention).items():
                            companion.write(tname, tensor)
                    del layer, prepared
                    tick(sum(ckpt.info(t).nbytes for t in src.family.owned_tensors(ckpt, name) if t in plan.owned))
                writer.close()
            except BaseException:
                writer.abort()
                raise
            written_files.append(into / shard.name)
        if companion:
            companion.close()
            written_files.append(into / comp.file)
    except BaseException:
        if companion:
            companion.abort()
        raise
    if plan.sharded and target.container == "safetensors":
        index = {
            "metadata": {"total_size": sum(s.nbytes for sh in plan.shards for s in sh.specs)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (into / INDEX_NAME).write_text(dump_json(index), encoding="utf-8")
    if target.container == "inc-pt":
        # INC's default format is one torch.save'd state dict; build it from the streamed shards.
        shards = [into / s.name for s in plan.shards]
        safetensors_to_torch_save(shards, into / INC_WEIGHTS)
        for f in shards:
            f.unlink()
    if plan.config is not None:
        (into / CONFIG_NAME).write_text(dump_json(plan.config), encoding="utf-8")
    for name, data in plan.extra_json.items():
        (into / name).write_text(dump_json(data), encoding="utf-8")
    for rel in plan.copied_files:
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt.root / rel, dst)
        tick(dst.stat().st_size)
    return sum(p.stat().st_size for p in into.rglob("*") if p.is_file())


def total_source_bytes(plan: ConversionPlan) -> int:
    ckpt = plan.source.ckpt
    tensors = sum(ckpt.info(t).nbytes for t in ckpt.locations)
    files = sum((ckpt.root / f).stat().st_size for f in plan.copied_files)
    return tensors + files


def measure_requantization(plan: ConversionPlan, progress: Progress | None = None) -> None:
    """Requantize every planned layer without writing (a dry run's error report), into ``plan.requant_stats``."""
    tick = progress or (lambda n: None)
    src = plan.source
    for name in plan.requantized_layers:
        _, plan.requant_stats[name] = requantize(src.read_layer(name), plan.prepared[name].requant)
        tick(sum(src.ckpt.info(t).nbytes for t in src.family.owned_tensors(src.ckpt, name)))
