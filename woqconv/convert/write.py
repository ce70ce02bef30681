"""Execute a plan: every output tensor made as the plan says, shard by shard, layers through worker threads.

The plan names, for each tensor, how it is made (tensor_ops): copied, zero-point fields shifted, words
re-laid out, a small array written, or computed by the target's encoder from the layer read into the IR.
Only the last needs torch. A shard the plan marks ``copy_whole`` starts as a kernel copy of its source
file, and only the tensors that differ are written over it. Memory: one layer per worker.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..kernels import packing
from ..io import safetensors_io
from .._lazy import torch
from ..io.checkpoint import CONFIG_NAME, INDEX_NAME, dump_json
from ..compute import map_bounded
from ..errors import FormatError
from ..ir import PackedCodes, QuantLinear
from ..requant import requantize
from ..io.safetensors_io import SafetensorsFile, SafetensorsWriter
from ..tensor_ops import Cast, Compute, Copy, Relayout, RowwiseToGptq, ShiftFields, Small, TensorOp, Transposed, ZerosToRowwise
from .plan import ConversionPlan, ShardPlan

Progress = Callable[[int], None]  # called with bytes of source data consumed since the last call


def write_plan(plan: ConversionPlan, into: Path, progress: Progress | None = None, workers: int = 1) -> int:
    """Write every planned file into the empty directory ``into``; return the bytes the output holds.

    ``workers`` threads write quantized layers and carried tensors concurrently (numpy, torch and file
    I/O release the GIL); each holds one layer, so memory grows with ``workers``, never with the model.
    """
    src = plan.source
    ckpt = src.ckpt
    target = plan.target
    tick = progress or (lambda n: None)
    weight_map: dict[str, str] = {}
    comp = target.companion
    companion = SafetensorsWriter(into / comp.file, plan.companion_specs, {"format": "pt"}) if comp else None
    buffers = threading.local()  # per thread: the re-layout's source and result words, reused across layers

    def write_layer(shard: ShardPlan, name: str, writer: SafetensorsWriter) -> tuple[list[str], int]:
        outputs = shard.outputs[name]
        if companion or any(isinstance(shard.ops[t], Compute) for t in outputs):
            layer = layer_to_write(plan, name)
            # Each re-laid-out codes tensor is written before its block ends, so its buffer can be reused.
            with packing.result_in_reused_buffer():
                encoded, loss = target.encode(layer)
                if loss:
                    plan.write_losses[name] = loss
                for t in outputs:
                    if isinstance(shard.ops[t], Compute):
                        _put(writer, t, encoded[t])
            if companion:
                with packing.result_in_reused_buffer():
                    for t, value in comp.family.encode(layer, comp.zero_point_convention).items():
                        _put(companion, t, value)
        for t in outputs:
            if not isinstance(shard.ops[t], Compute):
                execute(plan, shard, t, writer, buffers)
        return outputs, sum(ckpt.info(t).nbytes for t in src.family.owned_tensors(ckpt, name) if t in plan.owned)

    def carry_tensor(shard: ShardPlan, t: str, writer: SafetensorsWriter) -> tuple[list[str], int]:
        execute(plan, shard, t, writer, buffers)
        if companion and t in plan.companion_passthrough:
            source_file = ckpt.shards[ckpt.locations[t]]
            if t in plan.companion_casts:
                _cast(companion, t, source_file, companion.dtype_of(t))
            else:
                companion.copy_from(t, source_file)
        return [t], ckpt.info(t).nbytes

    # Each finished file is fsynced and closed in the background while the next shard is converted:
    # the flush of one shard (0.3-0.8 s per GB here) no longer stalls the pipeline.
    closing: list[Future] = []
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    closer = ThreadPoolExecutor(2)
    try:
        for shard in plan.shards:
            writer = write_shard(into, shard, ckpt.shards.get(shard.source), carry_tensor, write_layer, pool, workers, weight_map, tick)
            closing.append(closer.submit(writer.close))
        if companion:
            companion.check_complete()
            closing.append(closer.submit(companion.close))
        for f in closing:
            f.result()
    except BaseException:
        closer.shutdown(wait=True)  # a file being closed in the background is not aborted under it
        if companion:
            companion.abort()
        raise
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        closer.shutdown(wait=True)  # every file closed (fsynced or not) before the caller cleans up
        packing.drop_reused_buffer()  # this thread's, when it converted layers itself (no pool)
    if plan.sharded and target.container == "safetensors":
        write_index(into, plan.shards, weight_map)
    written = write_configs_and_files(into, ckpt.path_of, plan.config, plan.extra_json, plan.copied_files, tick)
    return written + target.finish(into, [into / s.name for s in plan.shards], plan.config or ckpt.config)


def execute(plan: ConversionPlan, shard: ShardPlan, name: str, writer: SafetensorsWriter, buffers: threading.local) -> None:
    """Make output tensor ``name`` as the plan says, unless it is computed (the layer's encoder writes those)."""
    ckpt = plan.source.ckpt
    op: TensorOp = shard.ops[name]
    if isinstance(op, Copy):
        if shard.copy_whole and op.source == name:
            writer.keep(name)  # the whole-file copy put it there
        else:
            writer.copy_from(name, ckpt.shards[ckpt.locations[op.source]], op.source)
    elif isinstance(op, Cast):
        _cast(writer, name, ckpt.shards[ckpt.locations[op.source]], op.dtype)
    elif isinstance(op, ShiftFields):
        words = packing.shift_fields(ckpt.read_bytes(op.source), op.bits, op.delta).view("<i4")
        writer.write_array(name, words.reshape(writer.shape_of(name)))
    elif isinstance(op, ZerosToRowwise):
        writer.write_array(name, packing.gptq4_zeros_to_rowwise(ckpt.read_bytes(op.source), op.groups, op.out_features, op.delta,
                                                                 op.slot_order))
    elif isinstance(op, Relayout):
        writer.write_array(name, _relayout(ckpt, op, buffers))
    elif isinstance(op, Transposed):
        # Elements moved as they are: floats of any width as unsigned integers of that width.
        array = _array(ckpt, op.inner, buffers)
        rows, cols = array.shape
        into = _reused(buffers, "transposed", rows * cols * array.dtype.itemsize).view(array.dtype).reshape(cols, rows)
        writer.write_array(name, packing.transposed(array, into), opaque=True)
    elif isinstance(op, Small):
        writer.write_array(name, op.value)
    else:
        raise TypeError(f"{name}: {op!r} is not a byte operation")


def _reused(buffers: threading.local, attr: str, nbytes: int) -> np.ndarray:
    """``nbytes`` of this thread's buffer ``attr``, grown when too small: fresh pages for every layer cost more
    than the work done in them (a 7B layer's words are 22 MB)."""
    if getattr(buffers, attr, np.empty(0, np.uint8)).size < nbytes:
        setattr(buffers, attr, np.empty(nbytes, dtype=np.uint8))
    return getattr(buffers, attr)[:nbytes]


def _array(ckpt, op: TensorOp, buffers: threading.local) -> np.ndarray:
    """What a byte operation makes, as a 2-D array (for :class:`Transposed`), in this thread's reused buffers:
    the source's elements, as unsigned integers of their width where they are floats."""
    info = ckpt.info(op.source)
    if isinstance(op, ZerosToRowwise):
        return packing.gptq4_zeros_to_rowwise(ckpt.read_bytes(op.source), op.groups, op.out_features, op.delta, op.slot_order)
    raw = ckpt.shards[ckpt.locations[op.source]].read_bytes(op.source, into=_reused(buffers, "source", info.nbytes))
    if isinstance(op, RowwiseToGptq):
        rows, cols = info.shape
        result = _reused(buffers, "result", info.nbytes).view("<i4").reshape(rows // 8, cols * 8)
        packing.rowwise4_to_gptq_into(raw.view("<i4").reshape(rows, cols), op.slot_order, result)
        return result
    if isinstance(op, ShiftFields):
        raw = packing.shift_fields(raw, op.bits, op.delta)
    elif not isinstance(op, Copy):
        raise TypeError(f"{op!r} makes no array to transpose")
    return raw.view(f"<u{safetensors_io.ITEMSIZE[info.dtype]}").reshape(info.shape)


def _relayout(ckpt, op: Relayout, buffers: threading.local) -> np.ndarray:
    """4-bit GPTQ words re-laid out along out_features, in this thread's reused buffers."""
    rows, cols = ckpt.info(op.source).shape
    nbytes = rows * cols * 4
    source = _reused(buffers, "source", nbytes)
    ckpt.shards[ckpt.locations[op.source]].read_bytes(op.source, into=source)
    result = _reused(buffers, "result", nbytes).view(np.int32)
    packing.gptq4_to_rowwise_into(source.view(np.int32).reshape(rows, cols), op.slot_order, result)
    return result.reshape(rows * 8, cols // 8)


def _cast(writer: SafetensorsWriter, name: str, source_file, dtype: str) -> None:
    """Write a source float tensor cast to ``dtype`` (the safetensors name its slot in ``writer`` was planned with)."""
    if isinstance(source_file, SafetensorsFile):
        writer.cast_from(name, source_file)  # to the slot's dtype, a slice of rows at a time
    else:
        writer.write(name, source_file.read(name).to(safetensors_io.DTYPES[dtype]))


def write_shard(into: Path, shard: ShardPlan, source_file, carry_tensor, write_layer, pool: ThreadPoolExecutor | None, workers: int,
                weight_map: dict[str, str], tick: Progress) -> SafetensorsWriter:
    """Write every tensor of one output shard: ``carry_tensor(shard, name, writer)`` and ``write_layer(shard,
    name, writer)`` each return (tensor names written, source bytes consumed). Returns the complete writer,
    still open (the caller closes it, in the background); on failure it is aborted."""
    writer = SafetensorsWriter(into / shard.name, shard.specs, shard.metadata, copy_of=source_file if shard.copy_whole else None)
    try:
        # Carried tensors (embeddings, norms, lm_head: about 1/7 of a 7B file) go through the same workers
        # as layers, so the copy overlaps the re-layouts instead of preceding them.
        work = [(carry_tensor, t) for t in shard.passthrough] + [(write_layer, n) for n in shard.outputs]
        for names, consumed in map_bounded(pool, lambda job: job[0](shard, job[1], writer), work, workers):
            weight_map.update(dict.fromkeys(names, shard.name))
            tick(consumed)
        writer.check_complete()
    except BaseException:
        writer.abort()
        raise
    return writer


def write_index(into: Path, shards, weight_map: dict[str, str]) -> None:
    """model.safetensors.index.json for the output shards (ShardPlans) and where each tensor went."""
    index = {
        "metadata": {"total_size": sum(s.nbytes for sh in shards for s in sh.specs)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (into / INDEX_NAME).write_text(dump_json(index), encoding="utf-8")


def write_configs_and_files(into: Path, path_of: Callable[[str], Path], config: dict | None, extra_json: dict[str, dict], copied_files: list[str],
                            tick: Progress) -> int:
    """The output's config files and the source's other files (tokenizer, ...; ``path_of`` says where each
    lies); returns the bytes the whole output directory holds."""
    if config is not None:
        (into / CONFIG_NAME).write_text(dump_json(config), encoding="utf-8")
    for name, data in extra_json.items():
        (into / name).write_text(dump_json(data), encoding="utf-8")
    for rel in copied_files:
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path_of(rel), dst)
        tick(dst.stat().st_size)
    return sum(p.stat().st_size for p in into.rglob("*") if p.is_file())


def layer_to_write(plan: ConversionPlan, name: str):
    """The layer as the target encodes it. Requantized layers are refitted from the source's weights
    (their error recorded in the plan); codebook layers are re-prepared with their indices (a remap to
    the target's table order needs them); affine layers reuse the planned layer plus their codes."""
    src, prepared = plan.source, plan.prepared[name]
    if prepared.requant is not None:
        layer, plan.requant_stats[name] = requantize(src.read_layer(name), prepared.requant)
        return _prepared_again(plan, name, layer)
    if src.is_codebook:
        return _prepared_again(plan, name, src.read_layer(name))
    return _layer_with_codes(plan, name, _prepared_again(plan, name, src.read_layer(name, codes=False)))


def _prepared_again(plan: ConversionPlan, name: str, layer):
    """``layer`` (read again while writing) prepared for the target as it was while planning."""
    prepared, planned = plan.target.prepare(layer), plan.prepared[name]
    # The file changed between planning and writing: refuse rather than write what was not planned.
    if prepared.refusal:
        raise FormatError(f"layer changed since planning: {prepared.refusal}", file=plan.source.ckpt.root, tensor=name)
    if planned.requant is None and (prepared.lossy is None) != (planned.lossy is None):
        raise FormatError("layer changed since planning: its loss is no longer what was planned", file=plan.source.ckpt.root, tensor=name)
    return prepared.layer


def _layer_with_codes(plan: ConversionPlan, name: str, layer: QuantLinear) -> QuantLinear:
    """The prepared layer (zero points, scales and g_idx read and checked again) plus its codes: still
    packed when both the source and the target speak packed words, else unpacked."""
    src, target = plan.source, plan.target
    comp = target.companion
    if target.family.encodes_packed and (comp is None or comp.family.encodes_packed):
        words = src.family.packed_codes(src.ckpt, name, src.format)
        if words is not None:
            problem = words.shape_problem(layer.out_features, layer.in_features)
            if problem:  # the file changed between planning and writing
                raise FormatError(f"layer changed since planning: {problem}", file=src.ckpt.root, tensor=name)
            return replace(layer, packed=words)
    codes = src.read_layer(name).codes
    return replace(layer, codes=codes)


def _put(writer: SafetensorsWriter, name: str, value: torch.Tensor | PackedCodes) -> None:
    """Write an encoded tensor (codes still packed as the source packed them are read now)."""
    writer.write(name, value.words if isinstance(value, PackedCodes) else value)


def total_source_bytes(plan: ConversionPlan) -> int:
    return source_bytes(plan.source.ckpt, plan.copied_files)


def source_bytes(ckpt, copied_files: list[str]) -> int:
    """Source bytes the progress counts: every tensor, and every file copied."""
    tensors = sum(ckpt.info(t).nbytes for t in ckpt.locations)
    files = sum(ckpt.path_of(f).stat().st_size for f in copied_files)
    return tensors + files


def measure_losses(plan: ConversionPlan, progress: Progress | None = None) -> None:
    """What writing would lose, measured without writing (a dry run's report): every planned requantization
    into ``plan.requant_stats``, and, for a target that measures its loss while encoding (the dense target's
    rounding), every layer's into ``plan.write_losses``."""
    tick = progress or (lambda n: None)
    src = plan.source
    for name in plan.prepared if plan.target.lossy_encoding else plan.requantized_layers:
        if plan.prepared[name].requant is not None:
            _, plan.requant_stats[name] = requantize(src.read_layer(name), plan.prepared[name].requant)
        else:
            _, loss = plan.target.encode(layer_to_write(plan, name))
            if loss:
                plan.write_losses[name] = loss
        tick(sum(src.ckpt.info(t).nbytes for t in src.family.owned_tensors(src.ckpt, name)))
