"""How one output tensor is made: the vocabulary of a conversion plan.

A plan says, for every tensor it will write, one of these. Most of a lossless conversion is bytes
that move unchanged or with a fixed re-arrangement, so most entries never need torch: only
:class:`Compute` does (the target's encoder on a layer read into the IR). The writer
(``convert/write.py``) executes them; formats choose them for the layers they can route without
computing (``Target.byte_route``). Each entry names source tensors by name; the writer finds their bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Copy:
    """The source tensor's bytes, unchanged (same dtype and shape)."""

    source: str


@dataclass(frozen=True)
class ShiftFields:
    """A packed zero-point tensor with every ``bits``-bit field moved by ``delta`` (mod 2^bits): GPTQ v1 <-> v2."""

    source: str
    bits: int
    delta: int


@dataclass(frozen=True)
class ZerosToRowwise:
    """4-bit GPTQ zero points (``groups x out`` fields, packed along out) re-packed in ``slot_order``'s nibble
    order, each moved by ``delta``: GPTQ's qzeros as AWQ's."""

    source: str
    groups: int
    out_features: int
    delta: int
    slot_order: tuple[int, ...]


@dataclass(frozen=True)
class Relayout:
    """4-bit GPTQ codes (words packed along in_features) re-laid out along out_features in ``slot_order``."""

    source: str
    slot_order: tuple[int, ...] | None


@dataclass(frozen=True)
class RowwiseToGptq:
    """4-bit codes packed along out_features in ``slot_order`` (AWQ GEMM's words) re-laid out as GPTQ's words,
    packed along in_features: the inverse of :class:`Relayout`."""

    source: str
    slot_order: tuple[int, ...] | None


@dataclass(frozen=True)
class Transposed:
    """What ``inner`` makes (a 2-D tensor), rows and columns exchanged, element by element: compressed-tensors
    stores GPTQ's code words, zero-point words and scales transposed."""

    inner: "Copy | ShiftFields | ZerosToRowwise | RowwiseToGptq"


@dataclass(frozen=True)
class Small:
    """A small array the plan computed (a trivial g_idx, ...), written as it is."""

    value: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Cast:
    """A float tensor cast to ``dtype`` (a safetensors dtype name; exact when widening)."""

    source: str
    dtype: str


@dataclass(frozen=True)
class Compute:
    """One of the tensors the target's encoder makes from ``layer`` read into the IR (needs torch)."""

    layer: str


TensorOp = Copy | ShiftFields | ZerosToRowwise | Relayout | RowwiseToGptq | Transposed | Small | Cast | Compute
