"""A ``torch.save`` state-dict file (INC's ``quantized_weight.pt``), read safely, with the same
interface as :class:`woqconv.io.safetensors_io.SafetensorsFile`.

Safety: ``weights_only=True`` makes torch's unpickler refuse anything but tensors and plain
containers, so a hostile file cannot run code. ``mmap=True`` leaves tensor data on disk until a
tensor is read, so opening a large file costs no memory.
"""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path

from . import safetensors_io
from .._lazy import torch
from ..errors import FormatError
from .safetensors_io import TensorInfo


class TorchFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            st = self.path.stat()
        except OSError as e:
            raise FormatError(f"cannot open: {e.strerror}", file=self.path) from None
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("not a regular file", file=self.path)  # opening a FIFO would block
        self.size = st.st_size
        if not zipfile.is_zipfile(self.path):
            raise FormatError("not a torch.save zip archive (legacy or corrupt .pt files are refused)", file=self.path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
            raise FormatError(f"refused to unpickle: needs more than tensors and plain containers ({first})", file=self.path) from None
        except Exception as e:  # torch raises RuntimeError and friends for damaged archives
            raise FormatError(f"cannot read torch archive: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=self.path) from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise FormatError("expected a flat state dict of named tensors", file=self.path)
        self._state: dict[str, torch.Tensor] = state
        self.metadata: dict[str, str] = {"format": "pt"}
        self.tensors: dict[str, TensorInfo] = {}
        for name, t in state.items():
            if t.dtype not in safetensors_io.DTYPE_NAMES:
                raise FormatError(f"unsupported dtype {t.dtype}", file=self.path, tensor=name)
            nbytes = t.numel() * t.element_size()
            self.tensors[name] = TensorInfo(name, safetensors_io.DTYPE_NAMES[t.dtype], tuple(t.shape), 0, nbytes)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str) -> torch.Tensor:
        return self._state[name].contiguous().clone()

    def copy_into(self, name: str, dst_fd: int, dst_offset: int) -> None:
        data = memoryview(self._state[name].contiguous().view(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(data):
            done += os.pwrite(dst_fd, data[done:], dst_offset + done)

    def close(self) -> None:
        self._state = {}

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
