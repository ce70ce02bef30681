"""Bit-packing primitives shared by every affine format.

Pure functions on tensors; no format knowledge beyond "which axis holds the packed fields".
A packed run is an LSB-first bit stream: field ``k`` of a run occupies bits ``[k*b, (k+1)*b)``,
and a run of 32 fields of ``b`` bits fills exactly ``b`` int32 words. For b in {1, 2, 4, 8} a
word holds ``32 // b`` whole fields; for the others (3, 5, 6, 7) fields straddle word borders, which
is the layout AutoGPTQ's 3-bit packer writes (FORMATS.md 1.3).

Words are stored as signed ``torch.int32``; every function here treats them as uint32.
Zero-point offsets (GPTQ v1 stores ``z - 1``) are applied to the unpacked fields by the callers,
never as an add on the packed word: a word add carries into the neighbouring field.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import importlib

import numpy as np

from .._lazy import torch

try:  # The same re-layouts in C (_relayout.c), built at install when a C compiler is present (setup.py).
    # By name: an extension module is no Python source, so a static reading of `from . import _relayout`
    # (the import contracts') would see an import of the whole package instead.
    _native = importlib.import_module("woqconv.kernels._relayout")
except ImportError:  # no compiler at install: the numpy versions below, slower, the same bytes
    _native = None

# AutoAWQ's GEMM kernels read nibble k of a word as out-channel 8c + AWQ_ORDER[k]
# (AutoAWQ awq/modules/linear/gemm.py); AWQ_REVERSE_ORDER is its inverse permutation.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)

_WORD = 32
_LITTLE_ENDIAN = sys.byteorder == "little"


def words_for(count: int, bits: int) -> int:
    """Number of int32 words that hold ``count`` fields of ``bits`` bits (count*bits must fill words)."""
    total = count * bits
    if total % _WORD:
        raise ValueError(f"{count} fields of {bits} bits do not fill whole 32-bit words")
    return total // _WORD


def _to_int32(words64: torch.Tensor) -> torch.Tensor:
    """Reinterpret uint32 values held in int64 as the int32 that has the same bit pattern."""
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def _move_to_front(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    dim = dim % t.dim()
    return (t if dim == 0 else t.movedim(dim, 0)), dim


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack(values: torch.Tensor, bits: int, dim: int = 0, slot_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack unsigned ``bits``-bit fields along ``dim`` into int32 words, LSB-first.

    ``values`` holds integers in ``[0, 2**bits)`` (any integer dtype); the size of ``dim`` times
    ``bits`` must be a multiple of 32. Returns int32 with ``dim`` shrunk by ``32 / bits``.
    ``slot_order`` (bits dividing 32 only) puts value ``slot_order[k]`` of each run into field ``k``,
    which is how AWQ interleaves channels without a separate copy.
    """
    _check_bits(bits)
    if _WORD % bits == 0 and dim % values.dim() == values.dim() - 1 and values.dim() > 1:
        return _pack_last(values, bits, slot_order)
    v, d = _move_to_front(values, dim)
    n = v.shape[0]
    rest = tuple(v.shape[1:])
    nwords = words_for(n, bits)
    if _WORD % bits == 0:
        per_word = _WORD // bits
        order = slot_order or tuple(range(per_word))
        runs = v.reshape(nwords, per_word, *rest)
        # One vectorized step per field slot keeps temporaries at int32 x one slot, not x the layer.
        # torch shifts signed ints as unsigned, so the top field wraps into the sign bit as intended.
        words = runs[:, order[0]].to(torch.int32)
        for k in range(1, per_word):
            words |= runs[:, order[k]].to(torch.int32) << (k * bits)
        out = words
    else:
        if slot_order is not None:
            raise ValueError("slot_order needs fields that do not straddle words")
        # Fields straddle words: expand to single bits, regroup the stream into 32-bit words.
        v = v.to(torch.int64)
        runs = n // _WORD
        bit_pos = torch.arange(bits, dtype=torch.int64).view(1, 1, bits, *([1] * len(rest)))
        stream = (v.reshape(runs, _WORD, 1, *rest) >> bit_pos) & 1          # [runs, 32, bits, ...]
        stream = stream.reshape(runs, bits, _WORD, *rest)                    # same bits, read as words
        weights = (torch.ones(1, dtype=torch.int64) << torch.arange(_WORD)).view(1, 1, _WORD, *([1] * len(rest)))
        out = _to_int32((stream * weights).sum(dim=2).reshape(nwords, *rest))
    return out if d == 0 else out.movedim(0, d).contiguous()


def unpack(words: torch.Tensor, bits: int, dim: int = 0, slot_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words along ``dim`` to uint8 fields (``dim`` grows by 32/bits)."""
    _check_bits(bits)
    if words.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {words.dtype}")
    if _WORD % bits == 0 and dim % words.dim() == words.dim() - 1 and words.dim() > 1:
        return _unpack_last(words, bits, slot_order)
    w, d = _move_to_front(words, dim)
    nwords = w.shape[0]
    rest = tuple(w.shape[1:])
    mask = (1 << bits) - 1
    if d == 0 and bits in (2, 4, 8) and not slot_order and _LITTLE_ENDIAN:
        return _unpack_first_by_bytes(w, bits)
    if _WORD % bits == 0:
        per_word = _WORD // bits
        order = slot_order or tuple(range(per_word))
        out = torch.empty((nwords, per_word, *rest), dtype=torch.uint8)
        for k in range(per_word):
            # Arithmetic shift of a negative int32 drags sign bits in from the left; the mask drops them.
            out[:, order[k]] = (w >> (k * bits)) & mask
        out = out.reshape(nwords * per_word, *rest)
    else:
        if slot_order is not None:
            raise ValueError("slot_order needs fields that do not straddle words")
        if nwords % bits:
            raise ValueError(f"{nwords} words cannot hold whole runs of 32 {bits}-bit fields")
        runs = nwords // bits
        bit_pos = torch.arange(_WORD, dtype=torch.int32).view(1, 1, _WORD, *([1] * len(rest)))
        stream = (w.reshape(runs, bits, 1, *rest) >> bit_pos) & 1             # [runs, bits, 32, ...]
        stream = stream.reshape(runs, _WORD, bits, *rest)                      # same bits, read as fields
        weights = (1 << torch.arange(bits, dtype=torch.int32)).view(1, 1, bits, *([1] * len(rest)))
        out = (stream * weights).sum(dim=2).reshape(runs * _WORD, *rest).to(torch.uint8)
    return out if d == 0 else out.movedim(0, d).contiguous()


def _unpack_first_by_bytes(words: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`unpack` along the first axis (GPTQ's qweight) of contiguous words, for 2, 4 and 8 bits:
    passes over uint8 bytes instead of int32 temporaries. One 4096 x 11008 layer, one thread: 35-54 ms
    against 60-88 ms (every full read of a GPTQ layer, e.g. by verify, unpacks its codes this way)."""
    per_word = _WORD // bits
    nwords, rest = words.shape[0], tuple(words.shape[1:])
    out = torch.empty((nwords, per_word, *rest), dtype=torch.uint8)  # field f of word row r: row r * per_word + f
    _byte_fields_into(_word_bytes(words), bits, lambda f: out[:, f])
    return out.view(nwords * per_word, *rest)


def _word_bytes(words: torch.Tensor) -> torch.Tensor:
    """The bytes of int32 ``words``, shape [..., 4]: a view when their layout allows, else of a copy."""
    flat = words.reshape(-1)
    if flat.stride(0) != 1:  # a single word can keep any stride, and view() needs unit stride
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).view(*words.shape, 4)


def _byte_fields_into(data: torch.Tensor, bits: int, dst_for) -> None:
    """Write field ``f`` of every word into ``dst_for(f)``, from ``data``: the words' bytes, [..., 4].

    In a little-endian word, byte ``j`` holds fields ``j * 8/bits`` onwards, LSB first, so each field is
    a shift and mask of one byte.
    """
    per_byte, mask = 8 // bits, (1 << bits) - 1
    for j in range(4):
        byte = data[..., j]
        for i in range(per_byte):
            dst = dst_for(j * per_byte + i)
            if i == per_byte - 1:  # the top field: a logical shift of the uint8 leaves nothing above it
                torch.bitwise_right_shift(byte, i * bits, out=dst)
            else:
                torch.bitwise_and(byte >> (i * bits) if i else byte, mask, out=dst)


def _pack_last(values: torch.Tensor, bits: int, slot_order: tuple[int, ...] | None) -> torch.Tensor:
    """:func:`pack` along the last axis (zero points), without moving that axis to the front and back."""
    per_word = _WORD // bits
    order = slot_order or tuple(range(per_word))
    n = values.shape[-1]
    runs = values.reshape(*values.shape[:-1], words_for(n, bits), per_word)
    words = runs[..., order[0]].to(torch.int32)
    for k in range(1, per_word):
        words |= runs[..., order[k]].to(torch.int32) << (k * bits)
    return words


def _unpack_last(words: torch.Tensor, bits: int, slot_order: tuple[int, ...] | None) -> torch.Tensor:
    """:func:`unpack` along the last axis (zero points), without moving that axis to the front and back."""
    per_word = _WORD // bits
    order = slot_order or tuple(range(per_word))
    mask = (1 << bits) - 1
    if bits in (2, 4, 8) and _LITTLE_ENDIAN:
        data = _word_bytes(words)
        shape = (*words.shape[:-1], words.shape[-1] * per_word)
        if order == tuple(range(per_word)):
            # LSB-first fields in a little-endian word are LSB-first fields of its bytes in order: unpack
            # the bytes, a third of the passes of the word-wise loop (every checkpoint scan reads all
            # qzeros; for these small tensors one stack beats the per-field writes below 2-8x).
            if bits == 8:
                return data.clone().view(shape)  # a view would alias the caller's words
            fields = torch.stack([(data >> (k * bits)) & mask for k in range(8 // bits)], dim=-1)
            return fields.view(shape)
        # Another slot order (AWQ's): each field written straight to its channel. An AWQ 4096 x 11008
        # layer, one thread: 28-45 ms against 57-80 ms for one int32 pass per slot.
        out = torch.empty((*words.shape, per_word), dtype=torch.uint8)
        _byte_fields_into(data, bits, lambda f: out[..., order[f]])
        return out.view(shape)
    out = torch.empty((*words.shape, per_word), dtype=torch.uint8)
    for k in range(per_word):
        out[..., order[k]] = (words >> (k * bits)) & mask
    return out.reshape(*words.shape[:-1], words.shape[-1] * per_word)


def awq_interleave(values: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis (out-channels, blocks of 8) into AWQ's nibble order before packing."""
    return _reorder_blocks_of_8(values, AWQ_ORDER)


def awq_deinterleave(values: torch.Tensor) -> torch.Tensor:
    """Undo :func:`awq_interleave` on the last axis (after unpacking AWQ words)."""
    return _reorder_blocks_of_8(values, AWQ_REVERSE_ORDER)


def _reorder_blocks_of_8(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    n = values.shape[-1]
    if n % 8:
        raise ValueError(f"AWQ interleave needs a multiple of 8 channels, got {n}")
    blocks = values.reshape(*values.shape[:-1], n // 8, 8)
    return blocks[..., list(order)].reshape(values.shape)


def v1_encode_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """True zero points to GPTQ v1 stored fields: ``z - 1`` per field (callers refuse z == 0 first)."""
    # uint8 arithmetic wraps modulo 256, and 2**bits divides 256: the mask finishes the modulo.
    return (zeros.to(torch.uint8) - 1) & ((1 << bits) - 1)


def v1_decode_zeros(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ v1 stored fields to true zero points, modular per field: ``(s + 1) mod 2**bits``.

    This is how INC and exllama read v1, so a stored all-ones field (INC's encoding of z = 0) gives 0.
    """
    return (stored.to(torch.uint8) + 1) & ((1 << bits) - 1)


def v1_word_decode(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Undo GPTQModel's whole-word ``- 0x11..11`` v1 encoding on packed words (bits in 2, 4, 8).

    GPTQModel writes v1 by subtracting the repeated-1 constant from each packed word, so a z = 0
    field borrows from its neighbour. Adding the constant back modulo 2**32 inverts it exactly.
    """
    if _WORD % bits:
        raise ValueError("word-arithmetic v1 exists only for bits dividing 32")
    ones = sum(1 << (k * bits) for k in range(_WORD // bits))
    w64 = (words.to(torch.int64) & 0xFFFFFFFF) + ones
    return _to_int32(w64 & 0xFFFFFFFF)


def shift_fields(raw: np.ndarray, bits: int, delta: int) -> np.ndarray:
    """Every ``bits``-bit field packed in the bytes ``raw`` (uint8) plus ``delta``, modulo ``2**bits``:
    GPTQ v1 <-> v2 zero points (``delta`` +1 reads v1 as true z, -1 stores z as v1) without unpacking.
    Only for ``bits`` 2, 4 or 8, whose fields never straddle a byte; torch-free."""
    if 8 % bits:
        raise ValueError(f"fields of {bits} bits straddle bytes")
    mask = (1 << bits) - 1
    byte = np.arange(256, dtype=np.int64)
    table = np.zeros(256, dtype=np.int64)
    for k in range(0, 8, bits):
        table |= (((byte >> k) + delta) & mask) << k
    return table.astype(np.uint8)[raw]


def gptq4_zeros_to_rowwise(raw: np.ndarray, groups: int, out: int, delta: int, slot_order: tuple[int, ...] | None) -> np.ndarray:
    """GPTQ 4-bit qzeros (the bytes ``raw`` of int32 ``[groups, out/8]``, fields sequential along out)
    re-packed in ``slot_order`` (field ``k`` holds out-channel ``8c + slot_order[k]``; AWQ GEMM's with
    :data:`AWQ_ORDER`), each field plus ``delta`` modulo 16 on the way (+1 for a v1 source). Equals
    ``pack(v1_decode_zeros(unpack(qzeros, 4, dim=1)), 4, dim=1, slot_order=slot_order)`` for v1; torch-free."""
    raw = raw.reshape(groups, out // 2)
    fields = np.empty((groups, out), dtype=np.uint8)
    np.bitwise_and(raw, 0xF, out=fields[:, 0::2])  # LSB-first: the low nibble of byte j is field 2j
    np.right_shift(raw, 4, out=fields[:, 1::2])
    if delta:
        fields += np.uint8(delta & 0xF)
        fields &= 0xF
    slots = fields.reshape(groups, out // 8, 8)[:, :, list(_checked_order(slot_order))]
    packed = slots[:, :, 0::2] | (slots[:, :, 1::2] << 4)  # byte j of a word holds slots 2j and 2j+1
    return np.ascontiguousarray(packed).view("<i4").reshape(groups, out // 8)


def unpack_nibbles_high_first(raw: torch.Tensor, count: int) -> torch.Tensor:
    """bitsandbytes' 4-bit layout: byte ``k`` holds element ``2k`` in its HIGH nibble and ``2k+1`` in
    its low one (FORMATS.md 4.2). ``raw`` is uint8 of any shape; returns uint8 ``[count]``."""
    flat = raw.reshape(-1)
    if not (flat.numel() - 1) * 2 < count <= flat.numel() * 2:
        raise ValueError(f"{flat.numel()} bytes cannot hold exactly {count} 4-bit indices")
    out = torch.stack((flat >> 4, flat & 0xF), dim=1).reshape(-1)
    return out[:count].contiguous()


def pack_nibbles_high_first(idx: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unpack_nibbles_high_first`: uint8 indices ``< 16`` -> ``ceil(n/2)`` bytes; an odd
    count is padded with one zero index, as bitsandbytes pads."""
    flat = idx.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat((flat, flat.new_zeros(1)))
    pairs = flat.view(-1, 2)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).contiguous()


# -- 4-bit re-layouts on packed words ------------------------------------------------------------
# GPTQ packs 8 codes of one out-channel along in_features into a word; AWQ GEMM and INC's HPU layout
# pack 8 codes of one in-channel along out_features. An aligned 8 (in) x 8 (out) block of codes is
# therefore 8 words either way, and converting one layout into the other is a transpose of an 8x8
# nibble matrix. Three delta swaps (16-, 8-, then 4-bit halves) transpose it in place, on whole rows
# of blocks at once, without ever widening a code to a byte.

# Delta-swap stages: (distance between paired words, bit shift, mask of the low halves), as int32.
_TRANSPOSE_STAGES = ((4, 16, 0x0000FFFF), (2, 8, 0x00FF00FF), (1, 4, 0x0F0F0F0F))
# The ~20 element-wise passes of a transpose run over chunks of this many words (x8), so that they
# stay in the CPU's caches instead of streaming a whole layer through memory twenty times, while each
# pass still covers enough words to amortize the per-call overhead. One 4096 x 11008 layer to AWQ,
# one thread (median of 5, torch ops): 13.2 ms at 32K words, 9.9 ms at 64K, 9.4 ms at 128K, 17.2 ms at 1M.
_CHUNK_WORDS = 64 * 1024

# The re-layouts run in C (_relayout.c) when it was built, and on numpy views of the tensors' memory
# otherwise; never on torch ops. In numpy each chunk is ~20 small element-wise calls, and a numpy call
# costs a few microseconds where torch's dispatch costs tens. One thread, median of 21, two interleaved
# runs each: a 512 x 11008 qweight to AWQ 10.0-10.7 ms against 10.0-13.6 ms in torch; to AWQ and back
# 36-37 ms against 54 ms; 1376 x 4096 to AWQ and back 39-42 ms against 58-67 ms. The C kernel loads and
# stores each word once: 512 x 11008 to AWQ in 2.9 ms (AVX2) or 7.3 ms (one block at a time) against
# numpy's 14-16 ms, median of 7 (benchmarks/relayout.py). Both release the GIL, and need no torch.


def _view(a: np.ndarray, *shape: int) -> np.ndarray:
    """``a`` reshaped, as a view or not at all: numpy's reshape silently copies when it cannot view
    (torch's ``view`` raises), and a write into such a copy would be lost without a sound."""
    return a.reshape(shape, copy=False)


def _transpose_nibble_blocks(w: np.ndarray, scratch: np.ndarray) -> None:
    """In place on ``w`` [8, n, m] int32: word j nibble i becomes word i nibble j, for every (n, m).

    ``scratch`` is int32 [4, n, m] (contents ignored).
    """
    rest = w.shape[1:]
    for step, shift, mask in _TRANSPOSE_STAGES:
        pairs = _view(w, 8 // (2 * step), 2, step, *rest)
        a, b = pairs[:, 0], pairs[:, 1]
        t = _view(scratch, 8 // (2 * step), step, *rest)
        # Swap the high halves of a with the low halves of b. Arithmetic >> drags sign bits into the
        # top of the field, but every mask's top bits are 0, so they never reach the result.
        np.right_shift(a, shift, out=t)
        t ^= b
        t &= mask
        b ^= t
        t <<= shift
        a ^= t


def _gather_slots(blocks: np.ndarray, order: tuple[int, ...], out: np.ndarray) -> None:
    """``out[k] = blocks[..., order[k]]`` for ``blocks`` [n, cols, 8] and ``out`` [8, n, cols].

    The two orders in use are affine, so one strided copy moves all eight slots: 3.3 ms against
    4.5-5.7 ms for eight per-slot copies of a 4096 x 11008 layer's words (one thread).
    """
    n, cols, _ = blocks.shape
    if order == tuple(range(8)):
        np.copyto(out, blocks.transpose(2, 0, 1))
    elif order == AWQ_ORDER:  # slot k = 4h + m holds word 2m + h
        np.copyto(_view(out, 2, 4, n, cols), blocks.reshape(n, cols, 4, 2).transpose(3, 2, 0, 1))
    else:
        for k in range(8):
            np.copyto(out[k], blocks[..., order[k]])


def _scatter_slots(w: np.ndarray, order: tuple[int, ...], blocks: np.ndarray) -> None:
    """The inverse of :func:`_gather_slots`: ``blocks[..., order[k]] = w[k]``."""
    n, cols, _ = blocks.shape
    if order == tuple(range(8)):
        np.copyto(blocks.transpose(2, 0, 1), w)
    elif order == AWQ_ORDER:
        np.copyto(_view(blocks, n, cols, 4, 2).transpose(3, 2, 0, 1), w.reshape(2, 4, n, cols))
    else:
        for k in range(8):
            np.copyto(blocks[..., order[k]], w[k])


def _chunk_rows(rows: int, row_words: int) -> int:
    return max(1, min(rows, _CHUNK_WORDS // max(1, row_words)))


_reuse = threading.local()  # per thread: ``armed`` (a block is open and its buffer not yet handed out), ``buffer``


@contextmanager
def result_in_reused_buffer() -> Iterator[None]:
    """Within this block, the first :func:`gptq4_to_rowwise` on this thread returns its words in a buffer
    the thread keeps and hands out again in its next such block; later calls in the block allocate as
    usual. For a writer that writes the result before the block ends: a fresh 22 MB result per 7B layer
    cost the kernel's faulting and zeroing of 3.5 GB of new pages per conversion (in-process, 7B to AWQ,
    3 interleaved pairs: re-layout CPU 1.8-2.2 s against 2.4-3.9 s, conversion 6.0-8.1 s against
    7.1-12.9 s). The buffer lives as long as the thread, and is as large as its largest layer."""
    _reuse.armed = True
    try:
        yield
    finally:
        _reuse.armed = False


def drop_reused_buffer() -> None:
    """Free this thread's buffer: for a thread that lives on after its conversion (workers=1 runs the
    conversion on the caller's thread)."""
    _reuse.__dict__.pop("buffer", None)


def _result_words(count: int) -> np.ndarray:
    if not getattr(_reuse, "armed", False):
        return np.empty(count, dtype=np.int32)
    _reuse.armed = False  # handed out once per block: a second result in the block must not alias the first
    buffer = getattr(_reuse, "buffer", None)
    if buffer is None or buffer.size < count:
        buffer = _reuse.buffer = np.empty(count, dtype=np.int32)
    return buffer[:count]


def _checked_order(slot_order: tuple[int, ...] | None) -> tuple[int, ...]:
    """A word's 8 slots as out-channel offsets; the C kernel refuses anything but a permutation of 0..7,
    and the numpy version must too (it would write a word with one channel twice and another never)."""
    order = tuple(slot_order) if slot_order is not None else tuple(range(8))
    if sorted(order) != list(range(8)):
        raise ValueError(f"slot order must be a permutation of 0..7, got {order}")
    return order


def gptq4_to_rowwise(qweight: torch.Tensor, slot_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """GPTQ 4-bit qweight ``[in/8, out]`` -> codes packed along out_features, ``[in, out/8]``.

    Field ``k`` of output word ``[i, c]`` holds the code of (in ``i``, out ``8c + slot_order[k]``):
    ``slot_order=None`` is INC's HPU layout (sequential), :data:`AWQ_ORDER` is AWQ GEMM's. Equals
    ``pack(unpack(qweight, 4, dim=0), 4, dim=1, slot_order)``, bit for bit.
    """
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[1] % 8:
        raise ValueError(f"expected int32 [in/8, out] with out divisible by 8, got {qweight.dtype} {list(qweight.shape)}")
    rows, out = qweight.shape
    result = _result_words(rows * out)
    gptq4_to_rowwise_into(qweight.contiguous().numpy(), slot_order, result)
    return torch.from_numpy(result.reshape(rows * 8, out // 8))


def gptq4_to_rowwise_into(qweight: np.ndarray, slot_order: tuple[int, ...] | None, result: np.ndarray) -> None:
    """:func:`gptq4_to_rowwise` on numpy arrays, torch-free: C-contiguous int32 ``qweight`` [in/8, out]
    (out divisible by 8) re-laid out into ``result``, int32 with as many elements, any shape (contiguous).
    For a plan's byte re-layout (tensor_ops.Relayout), which reads and writes numpy buffers."""
    rows, out = qweight.shape
    order = _checked_order(slot_order)
    if _native is not None:
        _native.gptq4_to_rowwise(qweight, result, rows, out // 8, bytes(order))
    else:
        gptq4_to_rowwise_numpy(qweight, order, result)


def gptq4_to_rowwise_numpy(qweight: np.ndarray, order: tuple[int, ...], result: np.ndarray) -> None:
    """:func:`gptq4_to_rowwise_into` in numpy: the fallback where the C kernel was not built."""
    rows, out = qweight.shape
    cols = out // 8
    blocks = _view(qweight, rows, cols, 8)  # word k of block [r, c] is out-channel 8c + k
    words = _view(result, rows, 8, cols)  # [in/8, 8, out/8] is [in, out/8]

    def step(r0: int, n: int, wn: np.ndarray, scratch: np.ndarray) -> None:
        _gather_slots(blocks[r0 : r0 + n], order, wn)
        _transpose_nibble_blocks(wn, scratch)
        np.copyto(words[r0 : r0 + n], wn.transpose(1, 0, 2))  # wn[i] now holds in-channel 8r + i

    _by_row_chunks(rows, cols, step)


def rowwise4_to_gptq(qweight: torch.Tensor, slot_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of :func:`gptq4_to_rowwise`: ``[in, out/8]`` packed along out -> GPTQ ``[in/8, out]``."""
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] % 8:
        raise ValueError(f"expected int32 [in, out/8] with in divisible by 8, got {qweight.dtype} {list(qweight.shape)}")
    in_features, cols = qweight.shape
    result = np.empty((in_features // 8, cols * 8), dtype=np.int32)
    rowwise4_to_gptq_into(qweight.contiguous().numpy(), slot_order, result)
    return torch.from_numpy(result)


def transposed(array: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
    """A 2-D array's transpose, contiguous (in ``into``, C-contiguous ``[cols, rows]`` of its dtype, when given):
    tiles of 32-bit words in C where the extension was built (compressed-tensors stores GPTQ's words transposed;
    3.5 GB of them at 7B), else numpy's copy of the transposed view."""
    rows, cols = array.shape
    result = np.empty((cols, rows), dtype=array.dtype) if into is None else into
    if _native is None or array.dtype.itemsize != 4:
        np.copyto(result, array.T)
    else:
        _native.transpose32(np.ascontiguousarray(array), result, rows, cols)
    return result


def rowwise4_to_gptq_into(qweight: np.ndarray, slot_order: tuple[int, ...] | None, result: np.ndarray) -> None:
    """:func:`rowwise4_to_gptq` on numpy arrays, torch-free: C-contiguous int32 ``qweight`` [in, out/8] into
    ``result`` [in/8, out] (a plan's byte re-layout, tensor_ops.RowwiseToGptq)."""
    in_features, cols = qweight.shape
    order = _checked_order(slot_order)
    if _native is not None:
        _native.rowwise4_to_gptq(qweight, result, in_features // 8, cols, bytes(order))
    else:
        rowwise4_to_gptq_numpy(qweight, order, result)


def rowwise4_to_gptq_numpy(qweight: np.ndarray, order: tuple[int, ...], result: np.ndarray) -> None:
    """:func:`rowwise4_to_gptq` in numpy, from C-contiguous int32 ``qweight`` [in, out/8] into ``result``
    [in/8, out]: the fallback where the C kernel was not built."""
    in_features, cols = qweight.shape
    rows = in_features // 8
    src = _view(qweight, rows, 8, cols)  # [r, i, c]: in-channel 8r + i
    blocks = _view(result, rows, cols, 8)

    def step(r0: int, n: int, wn: np.ndarray, scratch: np.ndarray) -> None:
        np.copyto(wn, src[r0 : r0 + n].transpose(1, 0, 2))
        _transpose_nibble_blocks(wn, scratch)  # wn[k]: out-channel 8c + order[k], nibble i = in 8r + i
        _scatter_slots(wn, order, blocks[r0 : r0 + n])

    _by_row_chunks(rows, cols, step)


def _by_row_chunks(rows: int, cols: int, step) -> None:
    """``step(r0, n, w, scratch)`` over chunks of ``n`` word rows from ``r0``, with ``w`` (8 planes) and
    ``scratch`` (4 planes) of int32 ``[n, cols]`` allocated once and reused."""
    chunk = _chunk_rows(rows, cols)
    w = np.empty((8, chunk, cols), dtype=np.int32)
    scratch = np.empty((4, chunk, cols), dtype=np.int32)
    for r0 in range(0, rows, chunk):
        n = min(chunk, rows - r0)
        step(r0, n, w[:, :n], scratch[:, :n])


def pack_padded(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of ``bits``-bit fields as one dense LSB-first stream per row, into ``ceil(n * bits / 32)`` int32
    words, the last one padded with zero bits (compressed-tensors' packing: any row length, fields straddling
    words at 3, 5, 6 and 7 bits). ``values``: ``[rows, n]`` unsigned integers; :func:`pack` along dim 1 when
    ``n * bits`` fills whole words."""
    rows, n = values.shape
    whole = -(-n // _WORD) * _WORD  # a run of 32 fields fills whole words at every width
    if whole != n:
        values = torch.nn.functional.pad(values.to(torch.int32), (0, whole - n))
    return pack(values, bits, dim=1)[:, : -(-n * bits // _WORD)].contiguous()


def unpack_padded(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_padded`: uint8 ``[rows, count]`` from int32 ``[rows, ceil(count * bits / 32)]``."""
    rows, nwords = words.shape
    if nwords != -(-count * bits // _WORD):
        raise ValueError(f"{nwords} words per row do not hold {count} fields of {bits} bits")
    whole = -(-nwords // bits) * bits  # whole runs: the general unpacker reads 32 fields from every ``bits`` words
    if whole != nwords:
        words = torch.nn.functional.pad(words, (0, whole - nwords))
    return unpack(words, bits, dim=1)[:, :count].contiguous()
