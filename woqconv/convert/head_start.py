"""Start copying the source's weight files into the output before the conversion is even planned.

When the target keeps the source's layout (GPTQ v1 -> gptq-v2 or inc-hf: the same tensors with the same
shapes under the same names), each output shard is its source shard with a few small tensors
(qzeros, scales) rewritten: the same header, the same offsets. Most of a conversion's time is then the
kernel copy of the packed codes, and it need not wait for anything: a thread copies every such shard
whole (``copy_file_range``) from the moment the output directory is known, while the main thread
imports torch, scans the checkpoint and plans the conversion (2-2.5 s of a 7B conversion here).

The copy is a guess, checked later. The writer compares the header it computes from the plan with the
source shard's header: equal, it keeps the copied bytes and rewrites only the tensors that are not the
source's own bytes at the same place; different, it truncates the file and writes it as usual. A refused
conversion discards the partial output as before, so nothing is ever visible but a finished checkpoint.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import OutputError
from ..formats import LayerFamily
from ..formats.detect import detect
from ..formats.targets import TARGETS
from ..safetensors_io import SafetensorsFile, TensorSpec, serialized_header
from ..writeback import start_writeback
from .ahead import RELAYOUT_TARGETS, Ahead
from .ahead import start as ahead_start
from .output import check_output, start_partial
from .plan import output_shard_names, shard_metadata

_CHUNK = 256 << 20  # bytes per copy_file_range call: a cancel is noticed within one; fewer GIL handoffs


def in_canonical_layout(shard: SafetensorsFile) -> bool:
    """The shard's header is byte for byte the one woqconv's writer (and safetensors' ``save_file``) would
    write for its tensors: only then can an output that keeps its tensors have the same header."""
    specs = [TensorSpec(t.name, t.dtype, t.shape) for t in shard.tensors.values()]
    return shard.header_bytes() == serialized_header(specs, shard_metadata(shard))[0]


def copyable_shards(src: Path, to: str) -> list[str]:
    """Source shards (relative names) worth copying whole before planning ``src`` -> ``to``: the target
    writes the source's own layer family into safetensors files of the same names, and the shard's
    header is canonical. Reads headers and configs only (no torch); [] when anything is unclear."""
    target = TARGETS.get(to)
    # Not for a target with a companion file (hpu's Gaudi cache): its writer repacks every layer on
    # the CPU, which overlaps the per-layer copies of the primary file, and would instead wait for the
    # whole head start (7B hpu, 3 interleaved pairs: 14.9-27.6 s with a head start, 12.7-21.8 s without).
    if target is None or target.container != "safetensors" or target.companion is not None:
        return []
    try:
        with Checkpoint.open(src) as ckpt:
            if ckpt.container != "safetensors" or LayerFamily.registry.get(detect(ckpt).family) is not target.family:
                return []
            names = output_shard_names(ckpt)
            return [n for n, f in sorted(ckpt.shards.items()) if names[n] == n and in_canonical_layout(f)]
    except Exception:  # noqa: BLE001 (a bad source is the scan's to report, in its own words)
        return []


class HeadStart:
    """Whole-file copies of source shards into the partial output directory, in one background thread."""

    def __init__(self, src: Path, partial: Path, shards: list[str], cleaned: list[str] | None = None):
        self.partial = partial
        self.cleaned = cleaned or []  # leftovers of interrupted runs removed while creating ``partial``
        self._cancel = threading.Event()
        self._finished = {name: threading.Event() for name in shards}
        self._complete: set[str] = set()
        self._thread = threading.Thread(target=self._run, args=(src, shards), name="woqconv-head-start", daemon=True)
        self._thread.start()

    def _run(self, src: Path, shards: list[str]) -> None:
        for name in shards:
            fd = -1
            try:
                if not self._cancel.is_set():
                    fd = os.open(self.partial / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    if _copy_whole(src / name, fd, self._cancel):
                        self._complete.add(name)
            except Exception:  # noqa: BLE001 (a failed guess must never fail the conversion)
                pass  # not copied: the writer writes this shard in full, and reports any error itself
            finally:
                self._finished[name].set()
            # Flush while the writer rewrites the few tensors that differ, so that its own fsync before
            # the rename has less left to do (7B inc-hf, 4 interleaved pairs: 6.08-7.16 s with this
            # flush, 6.34-7.26 s without; it was faster in 3 of them).
            if fd >= 0:
                try:
                    if name in self._complete and not self._cancel.is_set():
                        os.fdatasync(fd)
                except Exception:  # noqa: BLE001
                    pass  # the writer's fsync reports any I/O error
                finally:
                    os.close(fd)

    def copied(self, shard: str) -> bool:
        """Wait for ``shard``'s copy; True when the partial directory holds the whole source file."""
        event = self._finished.get(shard)
        if event is None:
            return False
        event.wait()
        return shard in self._complete

    def prefilled(self, shard: str) -> None:
        return None  # nothing is re-laid out ahead (ahead.Ahead's interface)

    def stop(self) -> None:
        """Cancel what is left and wait for the thread (before the partial directory is removed)."""
        self._cancel.set()
        self._thread.join()


def _copy_whole(src: Path, fout: int, cancel: threading.Event) -> bool:
    fin = os.open(src, os.O_RDONLY)
    try:
        size, done = os.fstat(fin).st_size, 0
        while done < size:
            if cancel.is_set():
                return False
            n = os.copy_file_range(fin, fout, min(_CHUNK, size - done), done, done)
            if n == 0:  # the source shrank under us: leave it to the writer, which checks everything
                return False
            start_writeback(fout, done, n)
            done += n
        return True
    finally:
        os.close(fin)


def start(src: Path, out: Path, to: str, overwrite: bool, *, workers: int = 1, requantize: str | None = None,
          relayout: bool = True) -> HeadStart | Ahead | None:
    """Create the partial output and start copying (or re-laying out, ahead.py, unless ``relayout`` is
    False) into it, when the guess is worth making. None when nothing is written early; an output that
    would be refused is left for the usual check to refuse, in its usual place."""
    if to in RELAYOUT_TARGETS:
        # Requantized layers get new codes: a re-layout of the old ones would be written for nothing.
        return None if requantize or not relayout else ahead_start(src, out, to, overwrite, workers)
    shards = copyable_shards(src, to)
    if not shards:
        return None
    try:
        check_output(src, out, overwrite=overwrite)
    except OutputError:
        return None
    partial, cleaned = start_partial(out)
    return HeadStart(src, partial, shards, cleaned)
