"""The canonical intermediate representation every adapter reads into and writes from.

What the IR means by each field is defined here and only here:

* ``codes``   uint8 ``[out, in]``: the unsigned stored level ``q`` of every weight, in ``[0, 2**bits)``.
  A converter may carry them still packed instead (``packed``, :class:`PackedCodes`): the same
  integers, re-laid out word by word for the target without widening each code to a byte.
* ``zeros``   uint8 ``[out, G]``: the TRUE zero point ``z`` of each (output channel, group), in
  ``[0, 2**bits)``, whatever offset the file stored (GPTQ v1 stores ``z - 1``). Symmetric
  checkpoints have ``z == 2**(bits-1)`` everywhere.
* ``scales``  ``[out, G]`` in the dtype the source stored (fp16, bf16 or fp32). Never cast silently:
  a cast is a lossy conversion and must be reported as one.
* ``g_idx``   int32 ``[in]``: the group of each input channel, or ``None`` for the contiguous
  default ``i // group_size``.
* ``bias``    ``[out]`` in its stored dtype, or ``None``.

``G = ceil(in / group_size)``. Two layers hold "the same weights" when :meth:`QuantLinear.dequantize`
gives bit-identical results; conversions between affine formats are lossless when the IR fields
are bit-identical, which implies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Iterable

import numpy as np

from .kernels import packing
from ._lazy import torch


class GIdxKind(str, Enum):
    """How a layer's input channels are assigned to groups (FORMATS.md 7.3)."""

    NONE = "none"  # no g_idx stored; groups are contiguous
    TRIVIAL = "trivial"  # stored, but equal to i // group_size
    BLOCK_UNIFORM = "block-uniform"  # each aligned block of group_size channels shares one label
    SCATTERED = "scattered"  # true act-order: groups are not contiguous blocks


def default_g_idx(in_features: int, group_size: int) -> torch.Tensor:
    return torch.arange(in_features, dtype=torch.int32) // group_size


# Exponent bits of each float dtype, by torch's name for it: a value is NaN or infinite exactly when
# they are all ones. Read on the value's bits as an integer of the same width (inspect's numpy scan
# tests scales the same way).
EXPONENT_MASKS = {"float16": 0x7C00, "bfloat16": 0x7F80, "float32": 0x7F800000}


def all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()``, as one integer max over the exponent bits where the dtype allows
    (a bool reduction over fp16 took 0.2 s per 7B checkpoint scan; this takes a tenth of that)."""
    mask = EXPONENT_MASKS.get(str(t.dtype).removeprefix("torch."))
    if mask is None or not t.numel():
        return bool(torch.isfinite(t).all())
    as_int = torch.int16 if t.element_size() == 2 else torch.int32
    return int((t.view(as_int) & mask).max()) != mask  # a same-size view keeps any strides: no copy


def _meta(t: torch.Tensor | None) -> torch.Tensor | None:
    """Shape and dtype without the data (a tensor on torch's ``meta`` device)."""
    return None if t is None else torch.empty(t.shape, dtype=t.dtype, device="meta")


@dataclass(frozen=True)
class LayerFacts:
    """What a layer's released tensors said, kept by a :meth:`QuantLinear.shell`."""

    is_symmetric: bool
    g_idx_kind: "GIdxKind"


# From the most to the least regular: a model's g_idx class is that of its least regular layer.
_G_IDX_ORDER = (GIdxKind.NONE, GIdxKind.TRIVIAL, GIdxKind.BLOCK_UNIFORM, GIdxKind.SCATTERED)


def least_regular(kinds: Iterable[GIdxKind]) -> GIdxKind:
    return max(kinds, key=_G_IDX_ORDER.index, default=GIdxKind.NONE)


def classify_g_idx(g_idx: torch.Tensor | np.ndarray | None, group_size: int) -> GIdxKind:
    """The class of a layer's g_idx: a tensor, or a numpy array (inspect's scan reads g_idx without torch)."""
    if g_idx is None:
        return GIdxKind.NONE
    g = _as_array(g_idx)
    if np.array_equal(g, np.arange(g.size, dtype=np.int32) // group_size):
        return GIdxKind.TRIVIAL
    if _block_labels(g, group_size) is not None:
        return GIdxKind.BLOCK_UNIFORM
    return GIdxKind.SCATTERED


def _as_array(g_idx: torch.Tensor | np.ndarray) -> np.ndarray:
    return (g_idx if isinstance(g_idx, np.ndarray) else g_idx.numpy()).reshape(-1)


def _block_labels(g_idx: np.ndarray, group_size: int) -> np.ndarray | None:
    """Labels of the aligned blocks if each block has one label and the labels are a permutation."""
    n = g_idx.size
    groups = -(-n // group_size)
    padded = np.full(groups * group_size, -1, dtype=np.int64)
    padded[:n] = g_idx
    blocks = padded.reshape(groups, group_size)
    labels = blocks[:, 0]
    valid = blocks >= 0
    if not bool(((blocks == labels[:, None]) | ~valid).all()):
        return None
    if not np.array_equal(np.sort(labels), np.arange(groups)):
        return None
    return labels


@dataclass
class PackedCodes:
    """A layer's codes exactly as its source packed them into int32 words, read on first use.

    ``dim=0``: packed along in_features, words ``[in*bits/32, out]`` (GPTQ's stream).
    ``dim=1``: packed along out_features, words ``[in, out*bits/32]``, field ``k`` of a word holding
    out-channel ``8c + slot_order[k]`` (AWQ GEMM, INC's HPU layout; sequential when ``slot_order`` is None).
    """

    bits: int
    dim: int
    slot_order: tuple[int, ...] | None
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]
    _words: torch.Tensor | None = field(default=None, repr=False)

    @property
    def words(self) -> torch.Tensor:
        if self._words is None:
            self._words = self.read()
        return self._words

    def shape_problem(self, out_features: int, in_features: int) -> str | None:
        b = self.bits
        want = (in_features * b // 32, out_features) if self.dim == 0 else (in_features, out_features * b // 32)
        if tuple(self.shape) != want:
            return f"packed codes have shape {list(self.shape)}, expected {list(want)}"
        return None

    def unpack(self) -> torch.Tensor:
        """uint8 codes ``[out, in]``."""
        return self.unpack_in_out().T.contiguous()

    def unpack_in_out(self) -> torch.Tensor:
        """uint8 codes ``[in, out]``: what either packing unpacks to before a transpose."""
        return packing.unpack(self.words, self.bits, dim=self.dim, slot_order=self.slot_order if self.dim else None)

    def repack(self, dim: int, slot_order: tuple[int, ...] | None = None) -> "torch.Tensor | PackedCodes":
        """The same codes as int32 words in the layout (``dim``, ``slot_order``), bit for bit; ``self``
        (unread) when that is the layout they are stored in."""
        here = (self.dim, tuple(self.slot_order or ()) if self.dim else ())
        there = (dim, tuple(slot_order or ()) if dim else ())
        if here == there:
            return self
        if self.bits == 4 and self.dim == 0 and dim == 1:
            return packing.gptq4_to_rowwise(self.words, slot_order)
        if self.bits == 4 and self.dim == 1 and dim == 0:
            return packing.rowwise4_to_gptq(self.words, self.slot_order)
        if self.bits == 4 and self.dim == 1 and dim == 1:  # another nibble order: through the GPTQ layout
            return packing.gptq4_to_rowwise(packing.rowwise4_to_gptq(self.words, self.slot_order), slot_order)
        return packing.pack(self.unpack().T, self.bits, dim=dim, slot_order=slot_order)


@dataclass
class QuantLinear:
    """One affine-quantized linear layer (GPTQ / AWQ / INC / AutoRound family)."""

    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int  # effective group size (never -1)
    zeros: torch.Tensor
    scales: torch.Tensor
    codes: torch.Tensor | None = None  # may be absent while planning (read lazily)
    g_idx: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)  # reader observations worth reporting
    packed: PackedCodes | None = None  # the codes still packed (streaming conversion), instead of ``codes``
    facts: LayerFacts | None = None  # set on a shell, whose tensors hold no data

    @property
    def num_groups(self) -> int:
        return -(-self.in_features // self.group_size)

    @property
    def g_idx_kind(self) -> GIdxKind:
        return self.facts.g_idx_kind if self.facts else classify_g_idx(self.g_idx, self.group_size)

    @property
    def is_symmetric(self) -> bool:
        if self.facts:
            return self.facts.is_symmetric
        if not self.zeros.numel():
            return True
        # min and max instead of an elementwise == and .all(): 0.01 ms against 0.6 ms per 7B layer.
        lo, hi = torch.aminmax(self.zeros)
        return int(lo) == int(hi) == 1 << (self.bits - 1)

    @property
    def is_shell(self) -> bool:
        return self.facts is not None

    def shell(self) -> "QuantLinear":
        """This layer with every tensor released: shapes, dtypes and the facts the tensors said stay.

        A whole model's zero points and scales are about 1/43 of its bytes (uint8 zeros and fp16 scales
        per group of 128): 1.6 GB for a 70B model. Planning keeps shells, and the writer reads each
        layer's small tensors again when it gets to it, so memory does not grow with the model.
        """
        if self.facts:
            return self
        # The bias stays: it is one value per output (a 70B model's are 10 MB), and a target may ask
        # whether it holds anything but zeros.
        return replace(self, zeros=_meta(self.zeros), scales=_meta(self.scales), g_idx=_meta(self.g_idx),
                       codes=None, packed=None, facts=LayerFacts(self.is_symmetric, self.g_idx_kind))

    def group_of_channel(self) -> torch.Tensor:
        return self.g_idx if self.g_idx is not None else default_g_idx(self.in_features, self.group_size)

    def validate(self) -> str | None:
        """Return a description of the first inconsistency, or None. Adapters turn it into an error."""
        out, g = self.out_features, self.num_groups
        if tuple(self.zeros.shape) != (out, g):
            return f"zero points have shape {list(self.zeros.shape)}, expected {[out, g]}"
        if tuple(self.scales.shape) != (out, g):
            return f"scales have shape {list(self.scales.shape)}, expected {[out, g]}"
        if int(self.zeros.max()) >= (1 << self.bits) if self.zeros.numel() else False:
            return f"zero point {int(self.zeros.max())} out of range for {self.bits} bits"
        if self.scales.numel() and not all_finite(self.scales):
            bad = int((~torch.isfinite(self.scales)).sum())
            return f"{bad} scales are NaN or infinite"
        if self.codes is not None:
            if tuple(self.codes.shape) != (out, self.in_features):
                return f"codes have shape {list(self.codes.shape)}, expected {[out, self.in_features]}"
            if self.codes.numel() and int(self.codes.max()) >= (1 << self.bits):
                return f"code {int(self.codes.max())} out of range for {self.bits} bits"
        if self.packed is not None:
            problem = self.packed.shape_problem(out, self.in_features)
            if problem:
                return problem
        if self.g_idx is not None:
            if tuple(self.g_idx.shape) != (self.in_features,):
                return f"g_idx has shape {list(self.g_idx.shape)}, expected {[self.in_features]}"
            if self.g_idx.numel() and (int(self.g_idx.min()) < 0 or int(self.g_idx.max()) >= g):
                return f"g_idx values outside [0, {g})"
        if self.bias is not None and tuple(self.bias.shape) != (out,):
            return f"bias has shape {list(self.bias.shape)}, expected {[out]}"
        return None

    def pack_codes(self, dim: int, slot_order: tuple[int, ...] | None = None) -> "torch.Tensor | PackedCodes":
        """The codes as int32 words packed along in_features (``dim=0``) or out_features (``dim=1``).

        From ``packed`` when the layer carries its source's words: a word-level re-layout, or the
        :class:`PackedCodes` itself when the layouts agree (a writer copies those words unread).
        Otherwise packed from ``codes``.
        """
        if self.codes is None and self.packed is not None:
            return self.packed.repack(dim, slot_order)
        if self.codes is None:
            raise ValueError(f"{self.name}: codes not loaded")
        return packing.pack(self.codes.T, self.bits, dim=dim, slot_order=slot_order)

    def dequantize(self) -> torch.Tensor:
        """``W[o, i] = (q[o, i] - z[o, g(i)]) * s[o, g(i)]`` in fp32, shape ``[out, in]``."""
        if self.codes is None:
            raise ValueError(f"{self.name}: codes not loaded")
        g = self.group_of_channel().to(torch.int64)
        z = self.zeros.to(torch.float32)[:, g]
        s = self.scales.to(torch.float32)[:, g]
        return (self.codes.to(torch.float32) - z) * s

    def with_contiguous_groups(self) -> "QuantLinear":
        """Drop a trivial g_idx, or relabel a block-uniform one exactly by permuting group columns.

        Returns a layer with ``g_idx=None`` and the same dequantized weights. Raises ValueError for a
        scattered g_idx, which no permutation of groups can express.
        """
        kind = self.g_idx_kind
        if kind in (GIdxKind.NONE, GIdxKind.TRIVIAL):
            return replace(self, g_idx=None)
        if kind is GIdxKind.BLOCK_UNIFORM:
            labels = torch.from_numpy(_block_labels(_as_array(self.g_idx), self.group_size))
            # Block b used group labels[b]; after relabelling block b uses group b.
            return replace(self, g_idx=None, zeros=self.zeros[:, labels].contiguous(), scales=self.scales[:, labels].contiguous())
        raise ValueError(f"{self.name}: scattered g_idx cannot be expressed without g_idx")


@dataclass
class CodebookLinear:
    """One codebook-quantized linear layer (bitsandbytes NF4/FP4, INC nf4/fp4).

    * ``idx``    uint8 ``[out * in]``: a 4-bit index per weight over the row-major flattened
      ``[out, in]`` weight (``None`` while planning: read lazily, like affine codes).
    * ``code``   fp32 ``[16]``: the table the indices point into, exactly as stored (bnb's
      ``quant_map``; for INC, its table laid out by INC's nibble values).
    * ``absmax`` fp32 ``[ceil(out*in / blocksize)]``: one scale per block of ``blocksize``
      consecutive flattened weights, double quantization already undone exactly as bnb does.
    * ``dtype``  the dtype of the weight that was quantized: bnb's dequantization casts the fp32
      products to it.

    Two codebook layers hold "the same weights" when :meth:`dequantize` is bit-identical.
    """

    name: str
    in_features: int
    out_features: int
    blocksize: int
    quant_type: str  # "nf4" or "fp4"
    code: torch.Tensor  # fp32 [16]
    absmax: torch.Tensor  # fp32 [ceil(out*in / blocksize)]
    dtype: torch.dtype  # dtype of the weight that was quantized
    idx: torch.Tensor | None = None  # uint8 [out * in]; absent while planning
    bias: torch.Tensor | None = None
    double_quant: bool = False  # the source stored absmax double-quantized (reported, not kept)
    notes: list[str] = field(default_factory=list)

    bits = 4
    g_idx = None
    g_idx_kind = GIdxKind.NONE
    is_symmetric = True  # a codebook has no zero point: reported as symmetric

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def is_shell(self) -> bool:
        return self.absmax.device.type == "meta"

    def shell(self) -> "CodebookLinear":
        """This layer with its absmax released (1/16 of an NF4 model's bytes); bias and table stay."""
        return replace(self, absmax=_meta(self.absmax), idx=None)

    @property
    def num_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def group_size(self) -> int:
        """Blocks are whole row segments when ``in % blocksize == 0``: then a per-row group size."""
        return self.blocksize

    @property
    def scales(self) -> torch.Tensor:
        return self.absmax

    def validate(self) -> str | None:
        if tuple(self.code.shape) != (16,):
            return f"code table has shape {list(self.code.shape)}, expected [16]"
        if tuple(self.absmax.shape) != (self.num_blocks,):
            return f"absmax has {self.absmax.numel()} values, expected {self.num_blocks} blocks of {self.blocksize}"
        if self.absmax.numel() and not all_finite(self.absmax):
            return f"{int((~torch.isfinite(self.absmax)).sum())} absmax values are NaN or infinite"
        if not bool(torch.isfinite(self.code).all()):
            return "code table holds NaN or infinite values"
        if self.idx is not None:
            if tuple(self.idx.shape) != (self.numel,):
                return f"indices have shape {list(self.idx.shape)}, expected [{self.numel}]"
            if self.idx.numel() and int(self.idx.max()) > 15:
                return f"index {int(self.idx.max())} out of range for a 16-entry code table"
        if self.bias is not None and tuple(self.bias.shape) != (self.out_features,):
            return f"bias has shape {list(self.bias.shape)}, expected {[self.out_features]}"
        return None

    def dequantize(self) -> torch.Tensor:
        """``W.flat[j] = code[idx[j]] * absmax[j // blocksize]`` in fp32, shape ``[out, in]``.

        bitsandbytes computes exactly these fp32 products and then casts to :attr:`dtype`.
        """
        if self.idx is None:
            raise ValueError(f"{self.name}: indices not loaded")
        n = self.numel
        vals = self.code[self.idx.to(torch.int64)]
        # Broadcast each block's absmax over its block instead of materialising an index per weight.
        full = n - n % self.blocksize
        out = torch.empty(n, dtype=torch.float32)
        out[:full] = (vals[:full].view(-1, self.blocksize) * self.absmax[: full // self.blocksize, None]).reshape(-1)
        if full < n:
            out[full:] = vals[full:] * self.absmax[-1]
        return out.view(self.out_features, self.in_features)
