"""What a checkpoint's stored zero points say, and which convention (v1 or v2) to read them with.

Pure functions of per-layer histograms of the stored fields, so that the torch scan (source.py) and the
numpy scan (scan.py) decide by the same rules. A family whose layout stores ``z`` itself (``raw_zero_points``:
AWQ, the HPU cache, INC's non-optimum layout, OpenVINO) has its convention fixed by the format; GPTQ's
fields are ``z`` (v2) or ``z - 1`` (v1) as the config says, and symmetric data proves which.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .base import ZP_V1, ZP_V1_WORD, ZP_V2, LayerFamily, SourceFormat

# What --zp-convention accepts: "auto" (the data where it can tell, else the config), or one to force.
CONVENTION_CHOICES = ("auto", ZP_V1, ZP_V2, ZP_V1_WORD)


def public_convention(convention: str) -> str:
    """v1-word is a v1 dialect; reports speak of v1 and v2 only."""
    return ZP_V1 if convention == ZP_V1_WORD else convention


def _raw(fmt: SourceFormat) -> bool:
    return LayerFamily.registry[fmt.family].raw_zero_points


def convention_source(fmt: SourceFormat) -> str:
    """Where a declared convention comes from when the data cannot prove it: the layout, or the config."""
    return "format" if _raw(fmt) else "config"


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
    return half if _raw(fmt) or fmt.zero_point_convention == ZP_V2 else half - 1


def settle_convention(fmt: SourceFormat, requested: str, stored: StoredZeros) -> tuple[SourceFormat, str, list[str]]:
    """The convention to read with: asked for, proved by symmetric data, or declared.

    Returns the format as read (its ``zero_point_convention`` and name say the convention used), where
    that convention came from ("user", "data", "config" or "format"), and warnings about contradictions.
    """
    declared = fmt.zero_point_convention
    half = 1 << (fmt.bits - 1)
    warnings = []
    data_says = None
    if not _raw(fmt) and len(stored.values) == 1:
        only = next(iter(stored.values))
        data_says = ZP_V2 if only == half else ZP_V1 if only == half - 1 else None

    if requested != "auto":
        used, source = requested, "user"
        if data_says and public_convention(requested) != data_says:
            warnings.append(
                f"reading zero points as {public_convention(requested)} as asked, but every stored zero point is {next(iter(stored.values))}, "
                f"which is symmetric {data_says} data"
            )
    elif data_says:
        used, source = (declared if public_convention(declared) == data_says else data_says), "data"
        if public_convention(declared) != data_says:
            warnings.append(
                f"config declares zero-point convention {public_convention(declared)} ({fmt.config_file}), but every stored zero point is "
                f"{next(iter(stored.values))}, which is symmetric {data_says} data: reading as {data_says}"
            )
    else:
        # AWQ and AutoRound's raw packings define their convention; GPTQ asym data cannot prove either.
        used, source = declared, convention_source(fmt)

    names = LayerFamily.registry[fmt.family].convention_names
    name = names.get(public_convention(used), fmt.name) if fmt.name in names.values() else fmt.name
    return replace(fmt, zero_point_convention=used, name=name), source, warnings


def reading_warnings(fmt: SourceFormat, stored: StoredZeros, symmetric: bool) -> list[str]:
    """What is suspicious about the zero points as read with ``fmt`` (settled); ``symmetric``: every layer reads
    as symmetric."""
    warnings = []
    used = fmt.zero_point_convention
    # v1 files cannot say z = 0 unambiguously (FORMATS.md 1.4): count what is suspicious.
    if not _raw(fmt) and public_convention(used) == ZP_V1:
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
