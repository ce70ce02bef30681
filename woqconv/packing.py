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

import torch

# AutoAWQ's GEMM kernels read nibble k of a word as out-channel 8c + AWQ_ORDER[k]
# (AutoAWQ awq/modules/linear/gemm.py); AWQ_REVERSE_ORDER is its inverse permutation.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)

_WORD = 32


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


def pack(values: torch.Tensor, bits: int, dim: int = 0, slot_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack unsigned ``bits``-bit fields along ``dim`` into int32 words, LSB-first.

    ``values`` holds integers in ``[0, 2**bits)`` (any integer dtype); the size of ``dim`` times
    ``bits`` must be a multiple of 32. Returns int32 with ``dim`` shrunk by ``32 / bits``.
    ``slot_order`` (bits dividing 32 only) puts value ``slot_order[k]`` of each run into field ``k``,
    which is how AWQ interleaves channels without a separate copy.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
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
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if words.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {words.dtype}")
    w, d = _move_to_front(words, dim)
    nwords = w.shape[0]
    rest = tuple(w.shape[1:])
    mask = (1 << bits) - 1
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


def awq_interleave(values: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis (out-channels, blocks of 8) into AWQ's nibble order before packing."""
    n = values.shape[-1]
    if n % 8:
        raise ValueError(f"AWQ interleave needs a multiple of 8 channels, got {n}")
    blocks = values.reshape(*values.shape[:-1], n // 8, 8)
    return blocks[..., list(AWQ_ORDER)].reshape(values.shape)


def awq_deinterleave(values: torch.Tensor) -> torch.Tensor:
    """Undo :func:`awq_interleave` on the last axis (after unpacking AWQ words)."""
    n = values.shape[-1]
    if n % 8:
        raise ValueError(f"AWQ interleave needs a multiple of 8 channels, got {n}")
    blocks = values.reshape(*values.shape[:-1], n // 8, 8)
    return blocks[..., list(AWQ_REVERSE_ORDER)].reshape(values.shape)


def v1_encode_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """True zero points to GPTQ v1 stored fields: ``z - 1`` per field (callers refuse z == 0 first)."""
    return ((zeros.to(torch.int16) - 1) & ((1 << bits) - 1)).to(torch.uint8)


def v1_decode_zeros(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ v1 stored fields to true zero points, modular per field: ``(s + 1) mod 2**bits``.

    This is how INC and exllama read v1, so a stored all-ones field (INC's encoding of z = 0) gives 0.
    """
    return ((stored.to(torch.int16) + 1) & ((1 << bits) - 1)).to(torch.uint8)


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
