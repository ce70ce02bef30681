"""INC's "default" container: one ``torch.save`` of the whole state dict (``quantized_weight.pt``).

``torch.save`` needs every tensor as a Python object at once. To keep memory bounded anyway, the
converter first streams safetensors shards to disk, then hands ``torch.save`` tensors that are
memory-mapped views of those files: the bytes pass through the page cache, never all resident.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..io import safetensors_io
from .._lazy import torch
from ..io.safetensors_io import SafetensorsFile


def safetensors_to_torch_save(shards: list[Path], out: Path) -> None:
    maps: list = []
    state: dict[str, torch.Tensor] = {}
    try:
        for path in shards:
            state.update(mapped_tensors(path, maps))
        # Deterministic key order, as INC's state_dict() would give for the same module tree is not
        # knowable here; sorted names at least make repeated conversions byte-identical.
        torch.save(dict(sorted(state.items())), out)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
    finally:
        state.clear()
        close_maps(maps)


def mapped_tensors(path: Path, maps: list) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of its memory map (appended to ``maps``), each over
    exactly its own bytes, as torch.save wants a storage."""
    meta = SafetensorsFile(path)
    tensors = {}
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if meta.size else None
        maps.append(mm)
        for name in sorted(meta.tensors):
            info = meta.tensors[name]
            dtype = safetensors_io.DTYPES[info.dtype]
            if info.nbytes == 0:
                tensors[name] = torch.empty(info.shape, dtype=dtype)
                continue
            # frombuffer over a read-only map warns that writes would fail; nothing writes here.
            view = memoryview(mm)[info.start : info.end]
            with _quiet_readonly_warning():
                tensors[name] = torch.frombuffer(view, dtype=dtype).reshape(info.shape)
    finally:
        meta.close()
    return tensors


def close_maps(maps: list) -> None:
    for mm in maps:
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a view still alive; the map is released with it


class _quiet_readonly_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message="The given buffer is not writable")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
