"""Open a quantized checkpoint: detect its format, check the labels against the data, list its layers.

Opening reads only the small tensors (qzeros, scales, g_idx, bias), layer by layer, and keeps of each
layer only a shell: shapes, dtypes and what the data said (symmetric, g_idx kind). Whoever needs the
values reads the layer again with :meth:`QuantizedCheckpoint.read_layer`, so memory stays bounded by a
layer, not the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from ._lazy import torch
from .io.checkpoint import Checkpoint
from .compute import map_in_order, release_freed_memory
from .errors import BadArgument
from .formats import LayerFamily
from .formats.base import ZP_V1, SourceFormat
from .formats.detect import detect
from .ir import CodebookLinear, GIdxKind, QuantLinear, least_regular
from .formats.scan import ScannedLayer
from .formats.zero_points import CONVENTION_CHOICES, StoredZeros, reading_warnings, settle_convention, symmetric_field

@dataclass
class QuantizedCheckpoint:
    ckpt: Checkpoint
    format: SourceFormat  # zero_point_convention here is the one actually used to read
    layer_names: list[str]  # the quantized layers, in name order
    declared_convention: str
    convention_source: str  # "data" (zero points decide), "config" (they cannot), "format" (layout defines it), "user"
    notes: list[str] = field(default_factory=list)  # what the scan found suspicious
    stored: StoredZeros | None = None  # the zero-point fields, counted by the scan (None for a codebook format)
    workers: int = 1
    # Layers the family's numpy pass described (LayerFamily.scan), by name: a plan routes them without torch.
    scans: dict[str, ScannedLayer] = field(default_factory=dict)
    _layers: list | None = field(default=None, repr=False)

    @property
    def layers(self) -> list[QuantLinear | CodebookLinear]:
        """Every layer's shell (no tensor data), in name order: from the numpy scan when it described every
        layer (no torch), else read and validated on first use, unless a pass that reads every layer anyway
        (a conversion's plan) supplied them with :meth:`adopt_shells`."""
        if self._layers is None:
            if self.layer_names and len(self.scans) == len(self.layer_names):
                # The numpy scan described every layer, and it steps aside for anything the reader would reject.
                self._layers = [self.scanned_shell(name) for name in self.layer_names]
            else:
                self._layers = _shells(self.ckpt, self.family, self.layer_names, self.format, self.workers)
        return self._layers

    def scanned_shell(self, name: str) -> ScannedLayer:
        """Layer ``name`` as the numpy scan described it, its fields read with the settled convention."""
        scanned = self.scans[name]
        zero_field = (1 << scanned.bits) - 1 if self.format.zero_point_convention == ZP_V1 else 0
        return scanned.read_as(symmetric_field(self.format, scanned.bits), zero_field)

    @property
    def has_shells(self) -> bool:
        return self._layers is not None

    def adopt_shells(self, shells: list[QuantLinear | CodebookLinear]) -> None:
        """Shells read by someone else (``family.read(...).shell()`` of every layer, in name order)."""
        if [s.name for s in shells] != self.layer_names:
            raise ValueError("shells must cover every layer, in name order")
        self._layers = shells

    @property
    def warnings(self) -> list[str]:
        """What the scan found suspicious, and what the zero points say once every layer has been read."""
        if self.stored is None:
            return list(self.notes)
        return self.notes + reading_warnings(self.format, self.stored, self.is_symmetric)

    @property
    def family(self) -> type[LayerFamily]:
        return LayerFamily.registry[self.format.family]

    @property
    def root(self):
        return self.ckpt.root

    def owned_tensors(self) -> dict[str, str]:
        """Every tensor that belongs to a quantized layer -> that layer's name."""
        owned = {}
        for layer in self.layers:
            for t in self.family.owned_tensors(self.ckpt, layer.name):
                owned[t] = layer.name
        return owned

    def read_layer(self, name: str, *, codes: bool = True) -> QuantLinear:
        """Read one layer into the IR: completely, or without its codes (its small tensors only)."""
        return self.family.read(self.ckpt, name, self.format, codes=codes)

    def iter_layers(self) -> Iterator[QuantLinear]:
        for layer in self.layers:
            yield self.read_layer(layer.name)

    @property
    def g_idx_kind(self) -> GIdxKind:
        return least_regular(layer.g_idx_kind for layer in self.layers)

    @property
    def is_codebook(self) -> bool:
        return self.family.codebook

    @property
    def is_symmetric(self) -> bool:
        return all(layer.is_symmetric for layer in self.layers)

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self) -> "QuantizedCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike, *, zero_point_convention: str = "auto", hpu_cache: bool = False,
                    workers: int = 1, read_layers: bool = True) -> QuantizedCheckpoint:
    """Open and scan a quantized checkpoint directory.

    Args:
        path: the checkpoint directory.
        zero_point_convention: ``"auto"`` decides from the data where it can (symmetric checkpoints)
            and from the config otherwise; ``"v1"`` / ``"v2"`` force a reading.
        hpu_cache: read INC's Gaudi cache (``hpu_model.safetensors``) beside the weights instead of them.
        workers: layers scanned at once, in threads (each holds one layer's small tensors).
        read_layers: read and validate every layer's small tensors now (``False``: on first use of
            ``layers``; a conversion's plan reads them once for both, which saved 0.4 s at 7B).
    """
    if zero_point_convention not in CONVENTION_CHOICES:
        raise BadArgument(f"zero-point convention must be one of {', '.join(CONVENTION_CHOICES)}, not {zero_point_convention!r}")
    ckpt = Checkpoint.open(path, hpu_cache=hpu_cache)
    try:
        src = _scan(ckpt, zero_point_convention, workers)
        if read_layers:
            src.layers  # noqa: B018 (reads and validates every layer now)
        return src
    except BaseException:
        ckpt.close()
        raise


def _scan(ckpt: Checkpoint, requested: str, workers: int = 1) -> QuantizedCheckpoint:
    fmt = detect(ckpt)
    family = LayerFamily.registry[fmt.family]
    prefixes = family.layer_prefixes(ckpt)
    notes: list[str] = family.source_notes(ckpt)
    if family.codebook:
        # No zero points, so no convention to settle: the layers' own quant state says everything.
        return QuantizedCheckpoint(ckpt, fmt, prefixes, fmt.zero_point_convention, "format", notes, workers=workers)
    declared = fmt.zero_point_convention

    def numpy_scan(p: str) -> ScannedLayer | None:
        scanned = family.scan(ckpt, p, fmt)
        release_freed_memory()
        return scanned

    def histogram(p: str) -> list[int]:
        # One histogram answers all the questions (a sort for unique values cost 10x more).
        fields = family.stored_zero_fields(ckpt, p, fmt).reshape(-1)
        counts = torch.bincount(fields, minlength=1 << fmt.for_layer(p).bits).tolist()
        del fields
        release_freed_memory()
        return counts

    # The family's numpy pass counts the fields on their bytes, without torch, in this thread (0.1-0.3 s at
    # 7B; a second thread's heap cost 3 MB more than it saved). The layers it cannot judge are read with
    # torch, ``workers`` at a time.
    scans = {p: scanned for p in prefixes if (scanned := numpy_scan(p)) is not None}
    rest = [p for p in prefixes if p not in scans]
    counted = dict(zip(rest, map_in_order(histogram, rest, workers)))
    stored = StoredZeros(fmt.bits)
    for p in prefixes:
        stored.add(list(scans[p].zero_counts) if p in scans else counted[p], fmt.for_layer(p).bits)
    fmt, source, settled = settle_convention(fmt, requested, stored)
    return QuantizedCheckpoint(ckpt, fmt, prefixes, declared, source, notes + settled, stored, workers, scans=scans)


def _shells(ckpt: Checkpoint, family: type[LayerFamily], prefixes: list[str], fmt: SourceFormat, workers: int = 1) -> list:
    """Read every layer's small tensors (validated by the reader), keep its shell, free the rest."""

    def shell(p: str):
        layer = family.read(ckpt, p, fmt, codes=False).shell()
        release_freed_memory()
        return layer

    return map_in_order(shell, prefixes, workers)
