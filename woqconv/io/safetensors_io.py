"""Strict, streaming safetensors reading and writing.

Why not ``safetensors.safe_open``: we need (1) a parser that rejects malformed headers with a
precise message before anything is allocated, (2) reads of single tensors without mapping or
touching the rest of a multi-GB file, and (3) a writer that knows every tensor's place up front and
accepts tensors in any order, so a converter can emit layer by layer into one large output file
without holding it in memory. The byte layout follows the safetensors spec: an 8-byte little-endian
header length, a JSON header, then the data buffer.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .._lazy import torch
from ..errors import FormatError
from .writeback import forget, start_writeback

# The dtypes woqconv computes on, by safetensors name -> torch's name for them. The torch dtypes
# themselves (``DTYPES``, ``DTYPE_NAMES``) are looked up on first use: reading headers needs no torch.
TORCH_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
# Little-endian numpy dtypes (``dtype.str``) by safetensors name, for the torch-free writer's arrays.
_NUMPY_NAMES = {"<i4": "I32", "<i8": "I64", "<f2": "F16", "<f4": "F32", "|u1": "U8", "|i1": "I8"}
# Dtypes we pass through byte for byte but never compute on.
_OPAQUE_SIZES = {"U16": 2, "U32": 4, "U64": 8}
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    **_OPAQUE_SIZES,
}


@functools.cache
def _torch_dtypes() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str]]:
    dtypes = {name: getattr(torch, torch_name) for name, torch_name in TORCH_NAMES.items()}
    return dtypes, {v: k for k, v in dtypes.items()}


def __getattr__(name: str):
    """``DTYPES`` (safetensors name -> torch dtype) and ``DTYPE_NAMES`` (its inverse), built on first use."""
    if name == "DTYPES":
        return _torch_dtypes()[0]
    if name == "DTYPE_NAMES":
        return _torch_dtypes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The order of safetensors' own serializer (its Rust Dtype enum, descending): data sorted by this rank,
# then by name. Writing the same order makes our files byte-identical to ``save_file`` output.
_SERIALIZE_RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]

# A header larger than this is not a model header; refusing it avoids a giant allocation.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_COPY_CHUNK = 64 * 1024 * 1024
# Bytes per pwrite call. Writing 3.9 GB from memory took 5.8 s (median of 6) in 64 MiB calls and 2.7 s
# in 256 KiB calls on the development VM (Linux 6.18, ext4), as fast as an in-kernel copy_file_range
# of the same file; 64-256 KiB calls all measured alike.
_WRITE_SLICE = 256 * 1024


def open_regular(path: Path) -> int:
    """Open a file of the input for reading, refusing anything but a regular file.

    O_NONBLOCK: opening a FIFO planted under a weight file's name would otherwise block forever
    (it has no effect on regular files). Directories and devices are refused by name here instead
    of failing later with an error that names no file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise FormatError(f"cannot open: {e.strerror}", file=path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise FormatError(f"not a regular file ({kind})", file=path)
    return fd


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a header naming a tensor twice is ambiguous (json would keep the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name, e.g. "I32"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class SafetensorsFile:
    """One safetensors file: header parsed and validated on open, tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = -1
        self._fd = open_regular(self.path)
        try:
            self.size = os.fstat(self._fd).st_size
            self.tensors, self.metadata = self._parse_header()
        except BaseException:
            self.close()  # and forget the number: __del__ must not close a descriptor reused since
            raise

    def _fail(self, problem: str, tensor: str | None = None) -> FormatError:
        return FormatError(problem, file=self.path, tensor=tensor)

    def _parse_header(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        if self.size < 8:
            raise self._fail(f"not a safetensors file: {self.size} bytes, too short for a header")
        (hlen,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
        if hlen > MAX_HEADER_BYTES:
            raise self._fail(f"header length {hlen} is absurd (limit {MAX_HEADER_BYTES} bytes)")
        if 8 + hlen > self.size:
            raise self._fail(f"header length {hlen} runs past the end of the file ({self.size} bytes): truncated?")
        raw = os.pread(self._fd, hlen, 8)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise self._fail(f"header names {e.args[0]!r} twice") from None
        # ValueError covers JSONDecodeError and integers too long to convert; RecursionError, nesting
        # deeper than the parser's stack.
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._fail(f"header is not valid JSON ({str(e)[:120]})") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        data_start = 8 + hlen
        self.data_start = data_start
        data_len = self.size - data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail("__metadata__ must map strings to strings")
        tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise self._fail("header entry is not an object", name)
            dtype = entry.get("dtype")
            shape = entry.get("shape")
            offsets = entry.get("data_offsets")
            if not isinstance(dtype, str) or dtype not in ITEMSIZE:
                raise self._fail(f"unknown dtype {dtype!r}", name)
            if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
                raise self._fail(f"invalid shape {shape!r}", name)
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len
            ):
                raise self._fail(f"data_offsets {offsets!r} lie outside the data buffer ({data_len} bytes)", name)
            info = TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
            if info.numel * ITEMSIZE[dtype] != info.nbytes:
                raise self._fail(
                    f"{dtype} {list(shape)} needs {info.numel * ITEMSIZE[dtype]} bytes but data_offsets span {info.nbytes}", name
                )
            tensors[name] = info
        # The spec requires the tensors to tile the buffer: no overlap, no gap, no trailing bytes.
        pos = data_start
        for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
            if info.start != pos:
                kind = "overlaps the previous tensor" if info.start < pos else f"leaves a gap of {info.start - pos} bytes"
                raise self._fail(f"data_offsets {kind}", info.name)
            pos = info.end
        if pos != self.size:
            raise self._fail(f"data buffer has {self.size - pos} bytes not covered by any tensor")
        return tensors, metadata

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read_raw(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Bytes ``[start, start + count)`` of a tensor (all of it by default) as a fresh uint8 tensor."""
        return torch.from_numpy(self.read_bytes(name, start, count))

    def read_bytes(self, name: str, start: int = 0, count: int | None = None, into: np.ndarray | None = None) -> np.ndarray:
        """Bytes ``[start, start + count)`` of a tensor (all of it by default) as a fresh uint8 array, or
        into the front of ``into`` (a contiguous array of at least that many bytes, returned as a uint8 view).
        Read straight into uninitialised memory: a zero-filled buffer (``bytearray``) cost a third of
        the read time on a 7B checkpoint."""
        info = self.tensors[name]
        count = info.nbytes - start if count is None else count
        raw = np.empty(count, dtype=np.uint8) if into is None else into.reshape(-1).view(np.uint8)[:count]
        view = memoryview(raw) if count else memoryview(b"")
        done = 0
        while done < count:
            n = os.preadv(self._fd, [view[done:]], info.start + start + done)
            if n <= 0:
                raise self._fail("file ended while reading tensor data (modified during the run?)", name)
            done += n
        return raw

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor into memory (a fresh CPU tensor that owns its bytes)."""
        info = self.tensors[name]
        if info.dtype in _OPAQUE_SIZES:
            raise self._fail(f"dtype {info.dtype} can be copied but not computed on", name)
        dtype = _torch_dtypes()[0][info.dtype]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        return self.read_raw(name).view(dtype).reshape(info.shape)

    def copy_into(self, name: str, dst_fd: int, dst_offset: int) -> None:
        """Copy one tensor's bytes into another file without passing them through Python objects."""
        info = self.tensors[name]
        self._copy_range(info.start, info.nbytes, dst_fd, dst_offset, name)

    def copy_file_into(self, dst_fd: int) -> None:
        """Copy the whole file, header included, to the start of another (in the kernel where it can)."""
        self._copy_range(0, self.size, dst_fd, 0, None)

    def _copy_range(self, start: int, nbytes: int, dst_fd: int, dst_offset: int, name: str | None) -> None:
        done = 0
        while done < nbytes:
            count = min(_COPY_CHUNK, nbytes - done)
            try:
                n = os.copy_file_range(self._fd, dst_fd, count, start + done, dst_offset + done)
            except OSError:
                n = os.pwrite(dst_fd, os.pread(self._fd, count, start + done), dst_offset + done)
            if n <= 0:
                raise self._fail("file ended while copying tensor data", name)
            start_writeback(dst_fd, dst_offset + done, n)
            done += n

    def header_bytes(self) -> bytes:
        """The file's first ``data_start`` bytes: the length word and the JSON header with its padding."""
        return os.pread(self._fd, self.data_start, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for s in self.shape:
            n *= s
        return n


def serialized_header(specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None) -> tuple[bytes, dict[str, tuple[TensorSpec, int]]]:
    """The bytes before a safetensors file's data (length word, JSON header, space padding) and each
    tensor's (spec, offset into the data), in the layout safetensors' ``save_file`` produces: data sorted
    by dtype rank (wider first, so every tensor is aligned to its element size) then name, header keys in
    data order after ``__metadata__``, header padded with spaces to 8 bytes."""
    specs = list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in writer specs")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    slots: dict[str, tuple[TensorSpec, int]] = {}
    pos = 0
    for s in sorted(specs, key=lambda s: (-_SERIALIZE_RANK.index(s.dtype), s.name)):
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [pos, pos + s.nbytes]}
        slots[s.name] = (s, pos)
        pos += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, slots


class SafetensorsWriter:
    """Write a safetensors file whose tensors are all declared up front and then filled in any order,
    in the layout :func:`serialized_header` gives (the one safetensors' ``save_file`` produces)."""

    def __init__(self, path: str | os.PathLike, specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None, *,
                 copy_of: SafetensorsFile | None = None):
        """``copy_of``: start the file as a whole copy of that source file, whose header must be the one these
        specs give (a plan decided it: ShardPlan.copy_whole); every tensor the source holds under the same
        name is then in place, and :meth:`keep` counts it as written."""
        self.path = Path(path)
        head, self._slots = serialized_header(specs, metadata)
        self.data_start = len(head)
        self.size = self.data_start + sum(spec.nbytes for spec, _ in self._slots.values())
        self._pending = set(self._slots)
        self._copy_of = copy_of
        if copy_of is not None and (copy_of.size != self.size or copy_of.header_bytes() != head):
            raise ValueError(f"{self.path}: {copy_of.path} does not have this file's header; it cannot be copied whole")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if copy_of is not None:
                copy_of.copy_file_into(self._fd)
            else:
                os.pwrite(self._fd, head, 0)
                os.ftruncate(self._fd, self.size)
        except BaseException:
            os.close(self._fd)
            raise

    def dtype_of(self, name: str) -> str:
        """The dtype a declared tensor is written in."""
        return self._slots[name][0].dtype

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The shape a declared tensor is written in."""
        return self._slots[name][0].shape

    def _place(self, name: str) -> tuple[TensorSpec, int]:
        if name not in self._pending:
            raise ValueError(f"{name}: not declared, or written twice")
        spec, rel = self._slots[name]
        return spec, self.data_start + rel

    def keep(self, name: str) -> None:
        """Count slot ``name`` as written: the file this one was copied from holds that tensor there."""
        self._place(name)
        if self._copy_of is None or name not in self._copy_of.tensors:
            raise ValueError(f"{name}: this file was not copied from one that holds it")
        self._pending.discard(name)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec, offset = self._place(name)
        got = _torch_dtypes()[1].get(tensor.dtype)
        if got != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(
                f"{name}: planned {spec.dtype} {list(spec.shape)}, got {got} {list(tensor.shape)}"
            )
        if spec.nbytes:
            self._pwrite(tensor, offset)
        self._pending.discard(name)

    def write_array(self, name: str, array: np.ndarray, *, opaque: bool = False) -> None:
        """:meth:`write` of a numpy array (a plan's byte operations, which never import torch). ``opaque``: the
        elements are the planned dtype's bytes seen as unsigned integers of its width (bf16 has no numpy dtype)."""
        spec, offset = self._place(name)
        got = _NUMPY_NAMES.get(array.dtype.str) if not opaque else spec.dtype if array.dtype.itemsize == ITEMSIZE[spec.dtype] else None
        if got != spec.dtype or tuple(array.shape) != spec.shape:
            raise ValueError(f"{name}: planned {spec.dtype} {list(spec.shape)}, got {array.dtype} {list(array.shape)}")
        if spec.nbytes:
            self._pwrite_bytes(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)), offset)
        self._pending.discard(name)

    def copy_from(self, name: str, source: SafetensorsFile, source_name: str | None = None) -> None:
        spec, offset = self._place(name)
        info = source.tensors[source_name or name]
        if info.dtype != spec.dtype or info.shape != spec.shape:
            raise ValueError(f"{name}: planned {spec.dtype} {list(spec.shape)}, source has {info.dtype} {list(info.shape)}")
        source.copy_into(info.name, self._fd, offset)
        self._pending.discard(name)

    def cast_from(self, name: str, source: SafetensorsFile, source_name: str | None = None) -> None:
        """Write a source float tensor cast to this slot's dtype, a slice of rows at a time: a 250 MB
        embedding never exists in memory twice (read and cast) at once."""
        spec, offset = self._place(name)
        info = source.tensors[source_name or name]
        if info.shape != spec.shape or info.dtype not in TORCH_NAMES or spec.dtype not in TORCH_NAMES:
            raise ValueError(f"{name}: planned {spec.dtype} {list(spec.shape)}, source has {info.dtype} {list(info.shape)}")
        dtypes = _torch_dtypes()[0]
        src_dtype, dst_dtype = dtypes[info.dtype], dtypes[spec.dtype]
        # Slices of whole rows (the first axis); a 0-d or empty tensor is one slice.
        total = spec.shape[0] if spec.shape and spec.shape[0] else 1
        row = info.numel // total
        rows = max(1, _COPY_CHUNK // 4 // max(1, row * ITEMSIZE[info.dtype]))
        for r0 in range(0, total, rows):
            n = min(rows, total - r0)
            start, count = r0 * row * ITEMSIZE[info.dtype], n * row * ITEMSIZE[info.dtype]
            cast = source.read_raw(info.name, start, count).view(src_dtype).to(dst_dtype) if count else torch.empty(0, dtype=dst_dtype)
            self._pwrite(cast, offset + r0 * row * ITEMSIZE[spec.dtype])
        self._pending.discard(name)

    def _pwrite(self, tensor: torch.Tensor, offset: int) -> None:
        self._pwrite_bytes(memoryview(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()), offset)

    def _pwrite_bytes(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done : done + _WRITE_SLICE], offset + done)
        start_writeback(self._fd, offset, len(data))  # so that close()'s fsync finds little left

    def check_complete(self) -> None:
        """Raise unless every planned tensor has been written."""
        if self._pending:
            raise RuntimeError(f"{self.path}: {len(self._pending)} planned tensors never written, e.g. {sorted(self._pending)[0]}")

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.check_complete()
            os.fsync(self._fd)
        finally:
            forget(self._fd)
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            forget(self._fd)
            os.close(self._fd)
            self._fd = -1
