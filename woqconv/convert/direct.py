"""Convert a plain 4-bit GPTQ checkpoint to gptq, gptq-v2, inc-hf or awq without importing torch.

Importing torch costs 1.5 s of CPU here, as long as copying a whole 7B checkpoint, and for these
targets nothing needs it: the output is the source's qweight copied (GPTQ targets) or re-laid out
(``packing.gptq4_to_rowwise_into``: C, or numpy), its qzeros copied or shifted by one per field (v1 <-> v2) or
re-packed in AWQ's order, and every other tensor copied. What the plan checks (geometry, finite scales,
g_idx range and class, the zero points' convention and symmetry) is what inspect's numpy scan reads
(numpy_scan.py), decided by the same functions as the torch scan.

This path takes only the checkpoints it is sure of: GPTQ in safetensors, 4 bits everywhere, no
per-layer overrides or INC wrappers, no act-order (a g_idx that is absent or ``i // group_size``), a
settled v1 or v2 reading, and nothing the target would refuse or warn about (``gptq``'s z = 0, an inc-hf
loader's cast of non-fp16 scales). Anything else returns None before a byte is written, and the
torch path plans, refuses or converts as before, with its own messages. Its output and report are
byte for byte the torch path's (tests/test_direct.py compares both on every fixture).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import numpy_scan, packing
from ..checkpoint import Checkpoint, weights_container
from ..errors import WoqconvError
from ..formats import TARGETS, LayerFamily
from ..formats.base import ZP_V1, ZP_V2
from ..formats.detect import detect
from ..formats.inc import mul_linear_modules
from ..formats.targets import ModelQuantSummary
from ..ir import GIdxKind
from ..safetensors_io import SafetensorsWriter, TensorSpec
from ..source import CONVENTION_CHOICES, StoredZeros, reading_warnings, settle_convention, symmetric_field
from .ahead import OP as RELAYOUT_OP
from .plan import ShardPlan, output_configs, output_shard_names, shard_metadata, unquantized_linears
from .stream import write_configs_and_files, write_index, write_shard

TARGET_NAMES = ("gptq", "gptq-v2", "inc-hf", "awq")
BITS = 4
ENABLED = True  # tests turn it off to compare with the torch path


@dataclass(frozen=True)
class Layer:
    """What the plan knows of a layer: the attributes of a QuantLinear shell that configs and reports read."""

    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int
    is_symmetric: bool
    g_idx_kind: GIdxKind
    g_idx_dtype: str | None  # the stored g_idx's dtype, None when there is none
    scales_dtype: str
    has_bias: bool
    zero_point_zeros: int = 0  # fields that read as z = 0 (inc-hf stores them as all-ones v1 fields)

    @property
    def num_groups(self) -> int:
        return -(-self.in_features // self.group_size)


@dataclass
class DirectPlan:
    ckpt: Checkpoint
    to: str
    format_name: str
    source_convention: str  # ZP_V1 or ZP_V2, as settled
    layers: dict[str, Layer]
    shards: list[ShardPlan]
    config: dict | None
    extra_json: dict[str, dict]
    copied_files: list[str]
    dropped_files: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def target(self):
        return TARGETS[self.to]

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1

    @property
    def layer_changes(self) -> dict[str, list[str]]:
        """What Target.prepare says it changed, in its words: a dropped trivial g_idx, zero points of 0 in INC's v1."""
        changes = {}
        for name, layer in self.layers.items():
            said = []
            if not self.target.keeps_g_idx and layer.g_idx_kind is GIdxKind.TRIVIAL:
                said.append("trivial g_idx dropped")
            if self.target.zero_point_convention == ZP_V1 and layer.zero_point_zeros:
                said.append(f"{layer.zero_point_zeros} zero points of 0 stored as all-ones fields (INC's modular v1)")
            if said:
                changes[name] = said
        return changes


def plan_direct(src: Path, to: str, zero_point_convention: str) -> DirectPlan | None:
    """The plan of ``src`` -> ``to`` when this path can take it, with the checkpoint open; else None."""
    if not ENABLED or to not in TARGET_NAMES or zero_point_convention not in CONVENTION_CHOICES or sys.byteorder != "little":
        return None
    try:
        if weights_container(src) != "safetensors":
            return None
        ckpt = Checkpoint.open(src)
    except (WoqconvError, OSError):
        return None
    try:
        plan = _plan(ckpt, to, zero_point_convention)
    except (WoqconvError, OSError, ValueError):
        plan = None  # the torch path reads the checkpoint again and reports the problem in its words
    except BaseException:
        ckpt.close()
        raise
    if plan is None:
        ckpt.close()
    return plan


def _plan(ckpt: Checkpoint, to: str, requested: str) -> DirectPlan | None:
    fmt = detect(ckpt)
    if fmt.family != "gptq" or fmt.bits != BITS or fmt.layer_overrides or not numpy_scan.reads(ckpt, fmt.family):
        return None
    if mul_linear_modules(ckpt):
        return None
    target = TARGETS[to]
    family = LayerFamily.registry[fmt.family]
    stored = StoredZeros(fmt.bits)
    found: list[tuple[str, int, int, int, numpy_scan.LayerScan]] = []
    for p in family.layer_prefixes(ckpt):
        in_features, out, gs = family._geometry(ckpt, p, fmt)
        if in_features % 8 or out % 8 or (to == "awq" and in_features % gs):
            return None  # the targets' own checks refuse or reshape these
        if to == "inc-hf" and ckpt.info(f"{p}.scales").dtype != "F16":
            return None  # INC's loader casts the scales: the torch path measures and warns
        scan = numpy_scan.scan_layer(ckpt, p, bits=BITS, out_features=out, groups=-(-in_features // gs), group_size=gs)
        if scan is None or scan.g_idx_kind not in (GIdxKind.NONE, GIdxKind.TRIVIAL):
            return None
        stored.add(scan.zero_counts, BITS)
        found.append((p, in_features, out, gs, scan))
    if not found:
        return None
    read_as, _, settled = settle_convention(fmt, requested, stored)
    if read_as.zero_point_convention not in (ZP_V1, ZP_V2):
        return None  # GPTQModel's word-arithmetic v1 is decoded by the torch path
    sym_field = symmetric_field(read_as, BITS)
    # The field that reads as z = 0: a v1 target refuses it or writes it its own way (the torch path's).
    zero_field = (1 << BITS) - 1 if read_as.zero_point_convention == ZP_V1 else 0
    layers: dict[str, Layer] = {}
    for p, in_features, out, gs, scan in found:
        zeros = scan.zero_counts[zero_field]
        if target.zero_point_convention == ZP_V1 and zeros and target.v1_zero_point_zero == "refuse":
            return None  # GPTQ v1 cannot store z = 0: the torch path refuses, naming the groups
        g_idx = f"{p}.g_idx"
        layers[p] = Layer(p, in_features, out, BITS, gs, scan.zero_counts[sym_field] == sum(scan.zero_counts), scan.g_idx_kind,
                          ckpt.info(g_idx).dtype if ckpt.has(g_idx) else None, ckpt.info(f"{p}.scales").dtype, ckpt.has(f"{p}.bias"),
                          zeros)
    symmetric = all(layer.is_symmetric for layer in layers.values())
    warnings = family.source_notes(ckpt) + settled + reading_warnings(read_as, stored, symmetric)

    owned = {t: p for p in layers for t in family.owned_tensors(ckpt, p)}
    names = output_shard_names(ckpt)
    shards = {name: ShardPlan(names[name], shard_metadata(f), source=name) for name, f in sorted(ckpt.shards.items())}
    for t in ckpt.tensor_names:
        if t not in owned:
            info = ckpt.info(t)
            shards[ckpt.locations[t]].passthrough.append(t)
            shards[ckpt.locations[t]].specs.append(TensorSpec(t, info.dtype, info.shape))
    for p, layer in layers.items():
        shard = shards[ckpt.locations[family.owned_tensors(ckpt, p)[0]]]
        shard.layers.append(p)
        shard.specs.extend(_specs(ckpt, layer, to))
    out_names = [s.name for sh in shards.values() for s in sh.specs]
    if len(out_names) != len(set(out_names)):
        return None  # a collision the torch path refuses

    summary = ModelQuantSummary(
        bits=fmt.bits, group_size=fmt.group_size, sym=symmetric, desc_act=False, declared=fmt.declared_config,
        unquantized_linears=unquantized_linears(ckpt, owned), layers=list(layers.values()),
    )
    qc = target.quantization_config(summary)
    config, extra, copied, dropped = output_configs(ckpt, target, qc, summary)
    return DirectPlan(ckpt, to, read_as.name, read_as.zero_point_convention, layers, list(shards.values()), config, extra, copied,
                      dropped, warnings)


def _specs(ckpt: Checkpoint, layer: Layer, to: str) -> list[TensorSpec]:
    """The layer's output tensors, in the order and with the shapes the target family's ``specs`` gives."""
    p, g, out = layer.name, layer.num_groups, layer.out_features
    scales = TensorSpec(f"{p}.scales", layer.scales_dtype, (g, out))
    if to == "awq":
        specs = [TensorSpec(f"{p}.qweight", "I32", (layer.in_features, out // 8)), TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)), scales]
    else:
        specs = [TensorSpec(f"{p}.qweight", "I32", (layer.in_features // 8, out)), TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)), scales,
                 TensorSpec(f"{p}.g_idx", "I32", (layer.in_features,))]
    if layer.has_bias:
        info = ckpt.info(f"{p}.bias")
        specs.append(TensorSpec(f"{p}.bias", info.dtype, info.shape))
    return specs


def write_direct(plan: DirectPlan, into: Path, tick: Callable[[int], None], workers: int, head) -> int:
    """Write every planned file into ``into``, as stream.write_plan does (carried tensors and layers through
    ``workers`` threads, each file fsynced in the background); return the bytes the output holds."""
    ckpt, to = plan.ckpt, plan.to
    family = LayerFamily.registry["gptq"]
    # Stored zero-point field -> true z (+1 from v1), then z -> the target's stored field (-1 into v1).
    delta = (plan.source_convention == ZP_V1) - (plan.target.zero_point_convention == ZP_V1)
    weight_map: dict[str, str] = {}
    buffers = threading.local()  # one re-layout result per thread, reused: fresh pages cost more than the work

    def convert_layer(name: str, writer: SafetensorsWriter) -> tuple[list[str], int]:
        layer, p = plan.layers[name], name
        source = ckpt.shards[ckpt.locations[f"{p}.qweight"]]
        if to == "awq":
            qw = f"{p}.qweight"
            if not writer.holds(qw, (RELAYOUT_OP, packing.AWQ_ORDER, (source, qw))):
                writer.write_array(qw, _rowwise(ckpt, qw, layer, buffers))
            raw = ckpt.read_bytes(f"{p}.qzeros")
            writer.write_array(f"{p}.qzeros", packing.gptq4_zeros_to_awq(raw, layer.num_groups, layer.out_features, delta))
        else:
            writer.copy_from(f"{p}.qweight", source)
            if delta:
                words = packing.shift_fields(ckpt.read_bytes(f"{p}.qzeros"), BITS, delta).view("<i4")
                writer.write_array(f"{p}.qzeros", words.reshape(layer.num_groups, layer.out_features // 8))
            else:
                _copy(writer, ckpt, f"{p}.qzeros")
            if layer.g_idx_dtype == "I32":
                _copy(writer, ckpt, f"{p}.g_idx")
            else:  # int64 (its values fit int32: the scan checked their range) or absent (AutoGPTQ writes one)
                g_idx = np.arange(layer.in_features, dtype=np.int32) // np.int32(layer.group_size)
                writer.write_array(f"{p}.g_idx", g_idx)
        _copy(writer, ckpt, f"{p}.scales")
        if layer.has_bias:
            _copy(writer, ckpt, f"{p}.bias")
        owned = family.owned_tensors(ckpt, p)
        return [s.name for s in _specs(ckpt, layer, to)], sum(ckpt.info(t).nbytes for t in owned)

    def carry_tensor(t: str, writer: SafetensorsWriter) -> tuple[list[str], int]:
        _copy(writer, ckpt, t)
        return [t], ckpt.info(t).nbytes

    closing: list[Future] = []
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    closer = ThreadPoolExecutor(2)
    try:
        for shard in plan.shards:
            writer = write_shard(into, shard, ckpt.shards[shard.source], head, carry_tensor, convert_layer, pool, workers, weight_map, tick)
            closing.append(closer.submit(writer.close))
        for f in closing:
            f.result()
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        closer.shutdown(wait=True)  # every file closed (fsynced or not) before the caller cleans up
    if plan.sharded:
        write_index(into, plan.shards, weight_map)
    return write_configs_and_files(into, ckpt.path_of, plan.config, plan.extra_json, plan.copied_files, tick)


def _copy(writer: SafetensorsWriter, ckpt: Checkpoint, name: str) -> None:
    writer.copy_from(name, ckpt.shards[ckpt.locations[name]])


def _rowwise(ckpt: Checkpoint, name: str, layer: Layer, buffers: threading.local) -> np.ndarray:
    """The GPTQ qweight ``name`` re-laid out for AWQ, in this thread's reused buffer."""
    words = layer.in_features * layer.out_features // 8
    for attr, size in (("source", words), ("result", words)):
        if getattr(buffers, attr, np.empty(0, np.int32)).size < size:
            setattr(buffers, attr, np.empty(size, dtype=np.int32))
    source = buffers.source[:words]
    ckpt.shards[ckpt.locations[name]].read_bytes(name, into=source.view(np.uint8))
    result = buffers.result[:words]
    packing.gptq4_to_rowwise_into(source.reshape(layer.in_features // 8, layer.out_features), packing.AWQ_ORDER, result)
    return result.reshape(layer.in_features, layer.out_features // 8)
