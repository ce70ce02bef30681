"""Re-lay out the source's GPTQ codes into the output in worker processes while torch is still imported.

Only on the torch path: a plain GPTQ checkpoint goes to the numpy path (direct.py), which never imports
torch and leaves these workers no idle time to fill.

GPTQ -> AWQ is mostly the re-layout of every ``qweight`` (3.5 of a 7B checkpoint's 3.9 GB), and the
converter cannot start it before torch is imported and the checkpoint planned: 1.5-2.5 s of a 7B
conversion here. The re-layout itself needs numpy only (``packing.gptq4_to_rowwise_into``). So, from the
source's headers alone, this predicts each output shard's header, writes it into the hidden partial
output, and starts worker processes (``_ahead_worker.py``; threads would wait behind torch's import for
the GIL at every numpy call) that re-lay out each qweight into its predicted slot.

The prediction is a guess, checked as the copy head start's is (head_start.py). A writer whose computed
header equals the predicted one keeps the file, and skips a tensor the workers wrote only when its
planned value is that same re-layout of that same source tensor (``PackedCodes.derivation``) and a
worker reported it written; every other tensor it writes itself, after that tensor's job (if any) is
over, so no worker ever writes under it. A different header stops the workers before the file is
rewritten. A refused conversion stops them and discards the partial output as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import packing
from ..checkpoint import Checkpoint
from ..errors import OutputError
from ..formats import LayerFamily
from ..formats.detect import detect
from ..safetensors_io import SafetensorsFile, TensorSpec, serialized_header
from .output import check_output, partial_dir_for, start_partial
from .plan import output_shard_names, shard_metadata

# Targets whose qweight is a word re-layout of a 4-bit GPTQ qweight, with their nibble order. (INC's
# layouts are too, but inc-hf keeps GPTQ's, and hpu's companion file already overlaps its re-layouts.)
RELAYOUT_TARGETS = {"awq": packing.AWQ_ORDER}
OP = "gptq4_to_rowwise"  # PackedCodes.derivation's name for that re-layout
# Below this many bytes of qweights the writer re-lays them out sooner than worker processes start
# (each costs about 0.2 CPU-s to start: Python and numpy).
MIN_BYTES = 256 << 20
WORKER_MODULE = "woqconv.convert._ahead_worker"


@dataclass(frozen=True)
class Job:
    """One qweight: ``rows x cols`` int32 words at ``src_offset`` of ``src`` -> ``dst_offset`` of ``dst``."""

    id: int
    name: str
    src: str
    src_offset: int
    rows: int
    cols: int
    dst: str
    dst_offset: int

    def as_list(self, slot_order) -> list:
        return [self.id, self.src, self.name, self.dst, self.dst_offset, list(slot_order or ())]


@dataclass
class PredictedShard:
    header: bytes
    size: int
    jobs: dict[str, Job] = field(default_factory=dict)


def predicted_specs(ckpt: Checkpoint, family) -> dict[str, tuple[list[TensorSpec], list[str]]] | None:
    """Per source shard, the output tensors of GPTQ layers converted to a rowwise-packed target and the
    qweights among them; None when a layer is not plain 4-bit GPTQ (the plan decides those). As the plan
    does, a layer's tensors go where its first tensor lies, the rest where they lie."""
    out: dict[str, tuple[list[TensorSpec], list[str]]] = {name: ([], []) for name in ckpt.shards}
    home: dict[str, str] = {}  # each layer tensor -> the shard of its layer's first tensor
    for prefix in family.layer_prefixes(ckpt):
        owned = family.owned_tensors(ckpt, prefix)
        home.update(dict.fromkeys(owned, ckpt.locations[owned[0]]))
    for t in ckpt.tensor_names:
        info = ckpt.info(t)
        specs, qweights = out[home.get(t, ckpt.locations[t])]
        if t not in home:
            specs.append(TensorSpec(t, info.dtype, info.shape))
        elif t.endswith(".qweight"):
            if info.dtype != "I32" or len(info.shape) != 2 or info.shape[1] % 8:
                return None
            rows, cols = info.shape
            specs.append(TensorSpec(t, "I32", (rows * 8, cols // 8)))
            qweights.append(t)
        elif not t.endswith(".g_idx"):  # the target keeps no g_idx; qzeros, scales and bias keep their shapes
            specs.append(TensorSpec(t, info.dtype, info.shape))
    return out


def predict(src: Path, to: str, partial: Path) -> dict[str, PredictedShard]:
    """Each output shard's predicted header and the jobs that fill it; {} when this is not a GPTQ -> awq
    style conversion of plain 4-bit safetensors, or anything is unclear. Headers and configs only (no torch)."""
    if to not in RELAYOUT_TARGETS or sys.byteorder != "little":  # the workers read words as native int32
        return {}
    try:
        with Checkpoint.open(src) as ckpt:
            fmt = detect(ckpt)
            if ckpt.container != "safetensors" or fmt.family != "gptq" or fmt.bits != 4 or fmt.layer_overrides:
                return {}
            per_shard = predicted_specs(ckpt, LayerFamily.registry[fmt.family])
            if per_shard is None:
                return {}
            names = output_shard_names(ckpt)
            shards: dict[str, PredictedShard] = {}
            next_id = 0
            for name, f in sorted(ckpt.shards.items()):
                specs, qweights = per_shard[name]
                head, slots = serialized_header(specs, shard_metadata(f))
                out = PredictedShard(head, len(head) + sum(s.nbytes for s in specs))
                for tname in sorted(qweights):  # layer name order: the writer's order
                    info = ckpt.info(tname)
                    out.jobs[tname] = Job(next_id, tname, str(ckpt.file_of(tname)), info.start, *info.shape,
                                          str(partial / names[name]), len(head) + slots[tname][1])
                    next_id += 1
                shards[names[name]] = out
            return shards
    except Exception:  # noqa: BLE001 (a bad source is the scan's to report, in its own words)
        return {}


class _Worker:
    """One worker process and what it has reported: the ids of the jobs it wrote, one per line."""

    def __init__(self, jobs: list[Job], slot_order):
        self.lock = threading.Lock()
        self.done: set[int] = set()
        self.over = False  # it exited, or was stopped: nothing more will be written or reported
        # The worker imports this very woqconv, wherever the caller found it.
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True, env=env,
        )
        try:
            self.proc.stdin.write(json.dumps([j.as_list(slot_order) for j in jobs]).encode())
            self.proc.stdin.close()
        except OSError:  # it died at once: its jobs are simply not done
            pass

    def wait_for(self, job_id: int) -> bool:
        """Wait until ``job_id`` is written (True) or never will be (False); either way no longer written."""
        with self.lock:
            while job_id not in self.done and not self.over:
                line = self.proc.stdout.readline()
                if not line:
                    self.proc.wait()
                    self.over = True
                elif line.strip().isdigit():
                    self.done.add(int(line))
            return job_id in self.done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.over = True


class Ahead:
    """Predicted output shards in the partial directory, being filled by worker processes."""

    def __init__(self, partial: Path, cleaned: list[str], shards: dict[str, PredictedShard], slot_order, workers: int):
        self.partial = partial
        self.cleaned = cleaned
        self.shards = shards
        self.slot_order = slot_order
        jobs = sorted((j for s in shards.values() for j in s.jobs.values()), key=lambda j: j.id)
        n = min(workers, len(jobs))
        # Job k goes to worker k mod n: neighbouring layers run side by side, in the order the writer asks.
        self._workers: list[_Worker] = []
        try:
            for k in range(n):
                self._workers.append(_Worker(jobs[k::n], slot_order))
        except BaseException:  # a process that would not start: none may go on writing unwatched
            for w in self._workers:
                w.stop()
            raise
        self._n = max(n, 1)
        self._stopped = threading.Event()

    def copied(self, shard: str) -> bool:
        return False  # nothing is copied whole (head_start.HeadStart's interface)

    def prefilled(self, shard: str) -> "ShardAhead | None":
        """What the workers are writing into output ``shard``, for its writer; None when nothing."""
        predicted = self.shards.get(shard)
        return ShardAhead(self, shard, predicted) if predicted is not None and not self._stopped.is_set() else None

    def settle(self, shard: str, name: str) -> bool:
        """Wait until no worker will write ``name`` of ``shard`` any more; True if one wrote it whole."""
        job = self.shards[shard].jobs.get(name)
        if job is None:
            return False
        return self._workers[job.id % self._n].wait_for(job.id)

    def wrote(self, shard: str, name: str, derivation) -> bool:
        """``name`` of ``shard`` holds ``derivation`` (a PackedCodes' recipe), written by a worker."""
        job = self.shards[shard].jobs.get(name)
        if job is None or self._stopped.is_set() or not _same_recipe(job, derivation, self.slot_order):
            return False
        return self.settle(shard, name)

    def stop(self) -> None:
        """Stop every worker and wait for it (before a predicted file is rewritten, or the directory removed)."""
        self._stopped.set()
        for w in self._workers:
            w.stop()


@dataclass
class ShardAhead:
    """One output shard's prediction, as its writer (safetensors_io.SafetensorsWriter) uses it."""

    ahead: Ahead
    shard: str
    predicted: PredictedShard

    @property
    def header(self) -> bytes:
        return self.predicted.header

    @property
    def size(self) -> int:
        return self.predicted.size

    def settle(self, name: str) -> bool:
        return self.ahead.settle(self.shard, name)

    def wrote(self, name: str, derivation) -> bool:
        return self.ahead.wrote(self.shard, name, derivation)

    def stop(self) -> None:
        self.ahead.stop()


def _same_recipe(job: Job, derivation, slot_order) -> bool:
    op, order, origin = derivation
    if op != OP or tuple(order or ()) != tuple(slot_order or ()):
        return False
    source, tname = origin
    info = source.tensors.get(tname) if isinstance(source, SafetensorsFile) else None
    return (info is not None and tname == job.name and str(source.path) == job.src and info.start == job.src_offset
            and info.shape == (job.rows, job.cols) and info.dtype == "I32")


def start(src: Path, out: Path, to: str, overwrite: bool, workers: int) -> Ahead | None:
    """Predict, create the partial output with the predicted files, and start the workers; None when
    there is nothing to do ahead (an output that would be refused is left to the usual check)."""
    try:
        check_output(src, out, overwrite=overwrite)
    except OutputError:
        return None
    shards = predict(src, to, partial_dir_for(out))
    if sum(j.rows * j.cols * 4 for s in shards.values() for j in s.jobs.values()) < max(MIN_BYTES, 1):
        return None
    partial, cleaned = start_partial(out)
    try:
        for name, shard in shards.items():
            fd = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(fd, shard.header, 0)
                os.ftruncate(fd, shard.size)
            finally:
                os.close(fd)
        return Ahead(partial, cleaned, shards, RELAYOUT_TARGETS[to], workers)
    except OSError:
        # No workers: the writer rewrites whatever was created, and reports any real problem with the
        # output in its own words.
        return Ahead(partial, cleaned, {}, RELAYOUT_TARGETS[to], 0)
