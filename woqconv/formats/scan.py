"""Inspect's pass over a layer's small tensors without torch: what the torch reader would find there.

For the layouts whose zero points are ``b``-bit fields of little-endian int32 words (GPTQ and AWQ GEMM)
with ``b`` in 2, 4, 8, no field straddles a byte, so a histogram of the qzeros bytes gives the
histogram of the fields. Per layer this module reads qzeros, scales, g_idx from the safetensors file
with numpy and returns:

* the histogram of the stored zero-point fields, which ``zero_points.StoredZeros``, ``settle_convention``
  and ``symmetric_field`` turn into the convention and each layer's symmetry, by the rules the torch
  scan uses;
* the layer's g_idx class, from ``ir.classify_g_idx`` (the torch reader's own function);
* or None when the torch reader would not accept the layer (NaN or infinite scales, g_idx outside
  ``[0, G)``, a bias it cannot read): the caller then lets the torch reader run and say why.

The order of the fields in a word (AWQ interleaves out-channels) changes no histogram, so one pass
serves both layouts. Shapes and dtypes are the family's ``geometry`` checks, made by the caller
(``LayerFamily.scan``), which returns the whole :class:`ScannedLayer` a conversion plan needs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from ..io.checkpoint import Checkpoint
from ..ir import EXPONENT_MASKS, GIdxKind, classify_g_idx
from ..io.safetensors_io import ITEMSIZE, TORCH_NAMES, SafetensorsFile

FAMILIES = ("gptq", "awq")
FIELD_BITS = (2, 4, 8)  # fields that never straddle a byte
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class LayerScan:
    zero_counts: list[int]  # zero_counts[v]: how many stored zero-point fields hold v
    g_idx_kind: GIdxKind


@dataclass(frozen=True)
class ScannedLayer:
    """A layer as its headers and this scan describe it: the shell a conversion plan needs (shapes,
    precision, dtypes, g_idx class, zero-point histogram), read without torch."""

    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int
    zero_counts: tuple[int, ...]  # zero_counts[v]: stored zero-point fields holding v
    g_idx_kind: GIdxKind
    g_idx_dtype: str | None  # the stored g_idx's dtype, None when there is none
    scales_dtype: str
    bias_dtype: str | None  # None when the layer has no bias (a scanned bias is [out_features])
    # What the fields mean once the checkpoint's convention is settled (read_as).
    is_symmetric: bool = False
    zero_point_zeros: int = 0  # fields that read as z = 0

    @property
    def num_groups(self) -> int:
        return -(-self.in_features // self.group_size)

    def read_as(self, symmetric_field: int, zero_field: int) -> "ScannedLayer":
        """This layer with its symmetry and z = 0 count, for the stored fields that read as z = 2^(b-1) and z = 0."""
        counts = self.zero_counts
        return replace(self, is_symmetric=counts[symmetric_field] == sum(counts), zero_point_zeros=counts[zero_field])


def reads(ckpt: Checkpoint, family: str) -> bool:
    """Whether this scan can stand in for the torch reader: a layout it knows, in safetensors files."""
    return family in FAMILIES and all(isinstance(shard, SafetensorsFile) for shard in ckpt.shards.values())


def scan_layer(ckpt: Checkpoint, prefix: str, *, bits: int, out_features: int, groups: int, group_size: int) -> LayerScan | None:
    """One layer's zero-point histogram and g_idx class; None if the torch reader should look at it instead."""
    if bits not in FIELD_BITS:
        return None
    if not _scales_finite(ckpt, f"{prefix}.scales"):
        return None
    bias = f"{prefix}.bias"
    if ckpt.has(bias) and (ckpt.info(bias).dtype not in TORCH_NAMES or ckpt.info(bias).shape != (out_features,)):
        return None
    g_idx = None
    if ckpt.has(f"{prefix}.g_idx"):
        g_idx = _g_idx(ckpt, f"{prefix}.g_idx")
        if g_idx is None or (g_idx.size and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups)):
            return None
    return LayerScan(zero_field_counts(ckpt.read_bytes(f"{prefix}.qzeros"), bits), classify_g_idx(g_idx, group_size))


def zero_field_counts(raw: np.ndarray, bits: int) -> list[int]:
    """Histogram of the ``bits``-bit fields packed LSB-first into the bytes ``raw`` (length ``2**bits``)."""
    return (np.bincount(raw, minlength=256) @ _fields_per_byte(bits)).tolist()


@functools.cache
def _fields_per_byte(bits: int) -> np.ndarray:
    """int64 ``[256, 2**bits]``: how many fields of each value a byte holds."""
    mask = (1 << bits) - 1
    table = np.zeros((256, 1 << bits), dtype=np.int64)
    for byte in range(256):
        for k in range(8 // bits):
            table[byte, (byte >> (k * bits)) & mask] += 1
    return table


def _scales_finite(ckpt: Checkpoint, name: str) -> bool:
    """``ir.all_finite`` on the stored bits: no value has an all-ones exponent."""
    dtype = ckpt.info(name).dtype
    mask = EXPONENT_MASKS.get(TORCH_NAMES.get(dtype, ""))
    if mask is None:
        return False
    bits = ckpt.read_bytes(name).view("<u2" if ITEMSIZE[dtype] == 2 else "<u4")
    return not bits.size or int((bits & mask).max()) != mask


def _g_idx(ckpt: Checkpoint, name: str) -> np.ndarray | None:
    """g_idx as the torch reader holds it (int32); None for stored values int32 cannot hold."""
    dtype = ckpt.info(name).dtype
    if dtype not in ("I32", "I64"):
        return None
    g = ckpt.read_bytes(name).view("<i4" if dtype == "I32" else "<i8")
    if dtype == "I64" and g.size and (int(g.min()) < _INT32.min or int(g.max()) > _INT32.max):
        return None
    return g.astype(np.int32)
