"""Open a quantized checkpoint: detect its format, check the labels against the data, list its layers.

Opening reads only the small tensors (qzeros, scales, g_idx, bias), layer by layer, and keeps of each
layer only a shell: shapes, dtypes and what the data said (symmetric, g_idx kind). Whoever needs the
values reads the layer again with :meth:`QuantizedCheckpoint.read_layer`, so memory stays bounded by a
layer, not the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterator

from ._lazy import torch
from .io.checkpoint import Checkpoint
from .compute import map_in_order, release_freed_memory
from .errors import FormatError
from .formats import LayerFamily
from .formats.base import ZP_V1, ZP_V1_WORD, ZP_V2, SourceFormat
from .formats.detect import detect
from .ir import CodebookLinear, GIdxKind, QuantLinear, least_regular
from .formats.scan import ScannedLayer

CONVENTION_CHOICES = ("auto", ZP_V1, ZP_V2, ZP_V1_WORD)
# Layouts whose zero points are raw by definition: the format, not the config, says so.
RAW_ZERO_FAMILIES = ("awq", "hpu", "inc-nonopt", "openvino")


def _public(convention: str) -> str:
    """v1-word is a v1 dialect; reports speak of v1 and v2 only."""
    return ZP_V1 if convention == ZP_V1_WORD else convention


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
        raise FormatError(f"zero-point convention must be one of {', '.join(CONVENTION_CHOICES)}, not {zero_point_convention!r}")
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


# -- what the stored zero points say, and which convention to read them with ---------------------------
# Pure functions of per-layer histograms of the stored fields, so that the torch scan above and
# the numpy scan (formats/scan.py) decide by the same rules.


@dataclass
class StoredZeros:
    """What a checkpoint's stored zero-point fields hold, counted layer by layer (nothing kept).

    Only symmetric data decides the convention: every field equal to 2^(b-1) is v2 (or AWQ raw), every
    field equal to 2^(b-1)-1 is v1. Mixed precision: each layer's fields are compared with its own
    2^(b-1); ``values`` holds them relative to the model-level ``bits``, so a uniform checkpoint reads
    exactly as a single layer would. All-ones and zero fields are what the v1 warnings count.
    """

    bits: int  # the model-level bits
    values: set[int] = field(default_factory=set)  # distinct fields seen, collected until there are three
    all_ones: int = 0
    zeros: int = 0

    def add(self, counts: list[int], bits: int) -> None:
        """One layer's histogram: ``counts[v]`` of its ``bits``-bit fields are ``v`` (``len(counts) == 2**bits``)."""
        if len(self.values) <= 2:
            shift = (1 << (self.bits - 1)) - (1 << (bits - 1))
            self.values |= {v + shift for v, n in enumerate(counts) if n}
        self.all_ones += counts[(1 << bits) - 1]
        self.zeros += counts[0]


def symmetric_field(fmt: SourceFormat, bits: int) -> int:
    """The stored field that reads as z = 2^(b-1) in a ``bits``-bit layer of ``fmt`` (as settled): a layer is
    symmetric exactly when every stored field is this value.

    Raw layouts (AWQ, whatever convention was asked for) and v2 store z. v1 stores z - 1 per field (read
    modulo 2^b). GPTQModel's v1-word subtracts 0x11..11 from each whole word: a word of z = 2^(b-1)
    fields becomes a word of 2^(b-1) - 1 fields (no field borrows), and it is the only word that reads
    back as one, so the per-field answer holds there too.
    """
    half = 1 << (bits - 1)
    return half if fmt.family in RAW_ZERO_FAMILIES or fmt.zero_point_convention == ZP_V2 else half - 1


def settle_convention(fmt: SourceFormat, requested: str, stored: StoredZeros) -> tuple[SourceFormat, str, list[str]]:
    """The convention to read with: asked for, proved by symmetric data, or declared.

    Returns the format as read (its ``zero_point_convention`` and name say the convention used), where
    that convention came from ("user", "data", "config" or "format"), and warnings about contradictions.
    """
    declared = fmt.zero_point_convention
    half = 1 << (fmt.bits - 1)
    warnings = []
    data_says = None
    if fmt.family == "gptq" and len(stored.values) == 1:
        only = next(iter(stored.values))
        data_says = ZP_V2 if only == half else ZP_V1 if only == half - 1 else None

    if requested != "auto":
        used, source = requested, "user"
        if data_says and _public(requested) != data_says:
            warnings.append(
                f"reading zero points as {_public(requested)} as asked, but every stored zero point is {next(iter(stored.values))}, "
                f"which is symmetric {data_says} data"
            )
    elif data_says:
        used, source = (declared if _public(declared) == data_says else data_says), "data"
        if _public(declared) != data_says:
            warnings.append(
                f"config declares zero-point convention {_public(declared)} ({fmt.config_file}), but every stored zero point is "
                f"{next(iter(stored.values))}, which is symmetric {data_says} data: reading as {data_says}"
            )
    else:
        # AWQ and AutoRound's raw packings define their convention; GPTQ asym data cannot prove either.
        used, source = declared, ("format" if fmt.family in RAW_ZERO_FAMILIES else "config")

    renamed = {"gptq": "gptq-v2", "gptq-v2": "gptq-v2"} if used == ZP_V2 else {"gptq": "gptq", "gptq-v2": "gptq"}
    return replace(fmt, zero_point_convention=used, name=renamed.get(fmt.name, fmt.name)), source, warnings


def reading_warnings(fmt: SourceFormat, stored: StoredZeros, symmetric: bool) -> list[str]:
    """What is suspicious about the zero points as read with ``fmt`` (settled); ``symmetric``: every layer reads
    as symmetric."""
    warnings = []
    used = fmt.zero_point_convention
    # v1 files cannot say z = 0 unambiguously (FORMATS.md 1.4): count what is suspicious.
    if fmt.family == "gptq" and _public(used) == ZP_V1:
        ambiguous = stored.all_ones
        if ambiguous and used == ZP_V1:
            warnings.append(
                f"{ambiguous} v1 zero points are stored as {(1 << fmt.bits) - 1:#x}: read as z = 0 (modular, as INC and exllama do); "
                "a GPTQModel word-arithmetic file would mean something else"
            )
        if "auto-round" in fmt.producer.lower() or fmt.packing_format == "auto_round:auto_gptq":
            clamped = stored.zeros
            if clamped and not symmetric:
                warnings.append(
                    f"{clamped} zero points are stored as 0 by AutoRound's v1 export, which clamps z = 0 to a stored 0: "
                    "they read as z = 1 and may have been z = 0 before export"
                )
    if fmt.sym and not symmetric:
        warnings.append("config says sym = true, but zero points vary: the data is asymmetric")
    return warnings


def _shells(ckpt: Checkpoint, family: type[LayerFamily], prefixes: list[str], fmt: SourceFormat, workers: int = 1) -> list:
    """Read every layer's small tensors (validated by the reader), keep its shell, free the rest."""

    def shell(p: str):
        layer = family.read(ckpt, p, fmt, codes=False).shell()
        release_freed_memory()
        return layer

    return map_in_order(shell, prefixes, workers)
