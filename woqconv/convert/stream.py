"""Execute a plan: stream tensors shard by shard, one quantized layer resident at a time."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..checkpoint import CONFIG_NAME, INDEX_NAME, dump_json
from ..errors import FormatError
from ..safetensors_io import SafetensorsWriter
from .plan import ConversionPlan

Progress = Callable[[int], None]  # called with bytes of source data consumed since the last call


def write_plan(plan: ConversionPlan, into: Path, progress: Progress | None = None) -> int:
    """Write every planned file into the (empty) directory ``into``; return bytes written."""
    src = plan.source
    ckpt = src.ckpt
    family = plan.target.family
    tick = progress or (lambda n: None)
    written = 0
    weight_map: dict[str, str] = {}
    for shard in plan.shards:
        writer = SafetensorsWriter(into / shard.name, shard.specs, shard.metadata)
        try:
            for t in shard.passthrough:
                writer.copy_from(t, ckpt.shards[ckpt.locations[t]])
                weight_map[t] = shard.name
                tick(ckpt.info(t).nbytes)
            for name in shard.layers:
                layer = src.read_layer(name)
                prepared = plan.target.prepare(layer)
                if prepared.refusal:  # the data changed between planning and writing
                    raise FormatError(f"layer changed since planning: {prepared.refusal}", file=ckpt.root, tensor=name)
                for tname, tensor in family.encode(prepared.layer, plan.target.zero_point_convention).items():
                    writer.write(tname, tensor)
                    weight_map[tname] = shard.name
                del layer, prepared
                tick(sum(ckpt.info(t).nbytes for t in family.owned_tensors(ckpt, name)))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        written += writer.size
    if plan.sharded:
        index = {
            "metadata": {"total_size": sum(s.nbytes for sh in plan.shards for s in sh.specs)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        written += _write_text(into / INDEX_NAME, dump_json(index))
    if plan.config is not None:
        written += _write_text(into / CONFIG_NAME, dump_json(plan.config))
    for name, data in plan.extra_json.items():
        written += _write_text(into / name, dump_json(data))
    for rel in plan.copied_files:
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt.root / rel, dst)
        size = dst.stat().st_size
        written += size
        tick(size)
    return written


def _write_text(path: Path, text: str) -> int:
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)


def total_source_bytes(plan: ConversionPlan) -> int:
    ckpt = plan.source.ckpt
    tensors = sum(ckpt.info(t).nbytes for t in ckpt.locations)
    files = sum((ckpt.root / f).stat().st_size for f in plan.copied_files)
    return tensors + files

