"""INC's non-optimum integer layout: ``INCWeightOnlyLinear(..., use_optimum_format=False)`` (FORMATS.md 3.1).

Reading only: no target writes this layout (INC's own ``load()`` cannot reload it, fixtures/README.md).
Per quantized linear, with ``pf = word bits // bits`` fields per word of the ``compression_dtype``:

  compression_dim=1 (INC's default):
    qweight int8/16/32/64 [out, ceil(in/pf)]   codes packed along in_features
    qzeros  same dtype    [out, ceil(G/pf)]    raw zero points packed along groups (asym only)
  compression_dim=0:
    qweight int8/16/32/64 [ceil(out/pf), in]   codes packed along out_features
    qzeros  same dtype    [ceil(out/pf), G]    raw zero points packed along out_features (asym only)
  scales  float [out, G]   ``scale_dtype`` (fp32 by default), kept as stored
  bias    float [out]      only if the linear had one
  g_idx   int32 [in]       only if INC was given one (group index of each input channel)

Fields are LSB-first inside each word (field ``k`` at bits ``[k*b, (k+1)*b)``), ``floor(word/b)`` per
word, padded with unused fields at the end of the packed axis. Asymmetric layers store unsigned codes
and raw zero points; symmetric layers store no qzeros and *signed* two's-complement codes, which the
IR holds as ``q + 2**(b-1)`` with ``z = 2**(b-1)``.

INC records neither ``compression_dim`` nor ``compression_dtype`` (nor in_features): both are read
from the tensor shapes and dtypes (:meth:`IncNonOptimumFamily.layout`), and
:meth:`IncNonOptimumFamily.classify` tells this layout from INC's optimum (GPTQ v1) layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import QuantLinear
from ..io.safetensors_io import TensorSpec
from .base import (
    LayerFamily,
    SourceFormat,
    expect_dtype,
    layer_error,
    require,
    validated,
)
from .base import effective_group_size
from .gptq import SCALE_DTYPES
from ..wording import counted

KEY = "inc-nonopt"
# safetensors dtype name -> bits of INC's compression_dtype
WORD_BITS = {"I8": 8, "I16": 16, "I32": 32, "I64": 64}
COMPRESSION_DTYPES = {8: "int8", 16: "int16", 32: "int32", 64: "int64"}
LAYOUTS_KEY = "inc_nonoptimum_layouts"  # SourceFormat.declared_config entry: {prefix: {compression_dim, compression_dtype}}


def unpack_words(words: torch.Tensor, bits: int, dim: int, count: int) -> torch.Tensor:
    """Unsigned ``bits``-bit fields packed LSB-first, ``floor(width / bits)`` per word, along ``dim``.

    ``words`` is any signed integer dtype (int8/16/32/64: its width is the word width); every word
    is read as its bit pattern. Returns uint8 with ``dim`` grown to ``count`` (the trailing padding
    fields of the last word are dropped). Vectorized over the tensor; one step per field slot.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if words.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"packed words must be int8, int16, int32 or int64, got {words.dtype}")
    per_word = words.dtype.itemsize * 8 // bits
    d = dim % words.dim()
    w = words.movedim(d, 0) if d else words
    nwords, rest = w.shape[0], tuple(w.shape[1:])
    if not (nwords - 1) * per_word < count <= nwords * per_word:
        raise ValueError(f"{nwords} words of {per_word} fields cannot hold exactly {count} fields")
    mask = (1 << bits) - 1
    out = torch.empty((nwords, per_word, *rest), dtype=torch.uint8)
    for k in range(per_word):
        # Arithmetic shift in the word's own dtype, then the low 8 bits (a modular cast) and the mask:
        # sign bits dragged in from the left never reach the field.
        out[:, k] = (w >> (k * bits)).to(torch.uint8) & mask
    out = out.reshape(nwords * per_word, *rest)[:count]
    return (out.movedim(0, d) if d else out).contiguous()


def signed_to_unsigned(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Two's-complement ``bits``-bit fields -> ``q + 2**(b-1)``: flipping the top bit of the field."""
    return fields ^ (1 << (bits - 1))


@dataclass(frozen=True)
class NonOptimumLayout:
    """How one layer is stored, as read from its shapes and dtypes."""

    compression_dim: int  # 1: packed along in_features, 0: packed along out_features
    word_bits: int  # 8, 16, 32 or 64
    in_features: int
    out_features: int
    group_size: int  # effective
    has_zeros: bool  # asym: qzeros stored; sym: signed codes, no qzeros

    @property
    def compression_dtype(self) -> str:
        return COMPRESSION_DTYPES[self.word_bits]

    def describe(self) -> dict:
        return {"compression_dim": self.compression_dim, "compression_dtype": self.compression_dtype}


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _in_features_dim1(ckpt: Checkpoint, prefix: str, packed: int, per_word: int, groups: int, declared_gs: int) -> int:
    """in_features of a compression_dim=1 layer: its qweight gives only ``ceil(in/pf)``.

    A stored g_idx (or a MulLinear's input_scale) names it exactly. Otherwise, among the values the
    packed width and the group count allow, the one without padding (``packed * pf``, what INC writes
    whenever pf divides in_features) is taken; if that one is excluded by the group count, a single
    remaining candidate is taken; anything else is ambiguous and refused.

    Limitation: INC records in_features nowhere, so a layer whose in_features is not a multiple of pf
    (and that has no g_idx) is read with ``packed * pf`` input channels when the group count allows
    it: the padding fields become extra columns. compression_dim=0 layers have no such ambiguity.
    """
    lo, hi = (packed - 1) * per_word + 1, packed * per_word
    candidates = [n for n in range(lo, hi + 1) if _ceil(n, effective_group_size(declared_gs, n)) == groups]
    # Tensors of length in_features: the layer's g_idx, and a MulLinear wrapper's input_scale.
    evidence = [f"{prefix}.g_idx"]
    if prefix.endswith(".linear"):
        evidence.append(f"{prefix[: -len('.linear')]}.input_scale")
    evidence = [t for t in evidence if ckpt.has(t)]
    for tensor in evidence:
        shape = ckpt.info(tensor).shape
        n = shape[0] if len(shape) == 1 else -1
        if n not in candidates:
            raise FormatError(
                f"shape {list(shape)}, but {prefix}.qweight's {packed} words of {per_word} fields and {groups} groups "
                f"of {declared_gs} allow in_features {_span(candidates)}",
                file=ckpt.file_of(tensor), tensor=tensor,
            )
        candidates = [n]
    if evidence:
        return candidates[0]
    if hi in candidates:
        return hi
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise layer_error(
            ckpt, prefix, "scales",
            f"{groups} groups of {declared_gs} do not fit in_features {lo}..{hi} (qweight's {packed} words of {per_word} fields)",
        )
    raise layer_error(
        ckpt, prefix, "qweight",
        f"in_features is ambiguous ({_span(candidates)}): INC records none, and qweight's {packed} words of {per_word} fields "
        f"with {groups} groups of {declared_gs} allow each",
    )


def _span(values: list[int]) -> str:
    if not values:
        return "none"
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


def optimum_fits(ckpt: Checkpoint, prefix: str, bits: int, group_size: int) -> bool:
    """Could this layer be INC's optimum (GPTQ v1) layout: qweight int32 [ceil(in/pf), out],
    qzeros int32 [G, ceil(out/pf)], scales [G, out], bias [out], g_idx [in]? Shapes and dtypes only."""
    names = {s: f"{prefix}.{s}" for s in ("qweight", "qzeros", "scales", "bias", "g_idx")}
    if not 1 <= bits <= 32 or not all(ckpt.has(names[s]) for s in ("qweight", "qzeros", "scales")):
        return False
    qw, qz, sc = (ckpt.info(names[s]) for s in ("qweight", "qzeros", "scales"))
    if qw.dtype != "I32" or qz.dtype != "I32" or not (len(qw.shape) == len(qz.shape) == len(sc.shape) == 2):
        return False
    per_word = 32 // bits
    groups, out = sc.shape
    if qw.shape[1] != out or qz.shape != (groups, _ceil(out, per_word)):
        return False
    ins = [n for n in range((qw.shape[0] - 1) * per_word + 1, qw.shape[0] * per_word + 1)
           if _ceil(n, effective_group_size(group_size, n)) == groups]
    if ckpt.has(names["g_idx"]):
        g = ckpt.info(names["g_idx"]).shape
        ins = [n for n in ins if g == (n,)]
    if ckpt.has(names["bias"]) and ckpt.info(names["bias"]).shape != (out,):
        return False
    return bool(ins)


class IncNonOptimumFamily(LayerFamily, key=KEY):
    """INC ``use_optimum_format=False`` integer layers (reading only)."""

    # scale_bf16_to_fp8 is not owned: as for INC's optimum layout (read by the GPTQ family) it is
    # carried through conversions as it is.
    suffixes = ("qweight", "qzeros", "scales", "g_idx", "bias")
    raw_zero_points = True

    # -- layout ----------------------------------------------------------------------------
    @classmethod
    def layout(cls, ckpt: Checkpoint, prefix: str, bits: int, group_size: int) -> NonOptimumLayout:
        """Read a layer's compression_dim/dtype and in/out features from its shapes; FormatError if it is not this layout."""
        qw_name, qz_name, sc_name = f"{prefix}.qweight", f"{prefix}.qzeros", f"{prefix}.scales"
        require(ckpt, qw_name, "qweight")
        require(ckpt, sc_name, "scales")
        expect_dtype(ckpt, qw_name, tuple(WORD_BITS))
        expect_dtype(ckpt, sc_name, SCALE_DTYPES)
        if not 1 <= bits <= 8:
            raise layer_error(ckpt, prefix, "qweight", f"{bits}-bit codes are not supported (1..8)")
        qw, sc = ckpt.info(qw_name), ckpt.info(sc_name)
        if len(qw.shape) != 2 or len(sc.shape) != 2:
            raise layer_error(ckpt, prefix, "qweight", f"expected 2-D qweight and scales, got {list(qw.shape)}, {list(sc.shape)}")
        word = WORD_BITS[qw.dtype]
        per_word = word // bits
        out, groups = sc.shape
        has_zeros = ckpt.has(qz_name)
        if has_zeros:
            qz = ckpt.info(qz_name)
            if qz.dtype != qw.dtype:
                raise layer_error(ckpt, prefix, "qzeros", f"dtype {qz.dtype}, but qweight is {qw.dtype} (INC packs both in one compression_dtype)")
            if len(qz.shape) != 2:
                raise layer_error(ckpt, prefix, "qzeros", f"expected 2-D, got {list(qz.shape)}")

        def fit(dim: int) -> NonOptimumLayout | FormatError:
            if dim == 1:
                if qw.shape[0] != out:
                    return layer_error(ckpt, prefix, "qweight", f"shape {list(qw.shape)}: compression_dim 1 needs [out={out}, ceil(in/{per_word})] for scales {list(sc.shape)}")
                try:
                    in_features = _in_features_dim1(ckpt, prefix, qw.shape[1], per_word, groups, group_size)
                except FormatError as e:
                    return e
                zeros_shape = (out, _ceil(groups, per_word))
            else:
                if qw.shape[0] != _ceil(out, per_word):
                    return layer_error(
                        ckpt, prefix, "qweight",
                        f"shape {list(qw.shape)}: compression_dim 0 needs [ceil(out/{per_word})={_ceil(out, per_word)}, in] for scales {list(sc.shape)}",
                    )
                in_features = qw.shape[1]
                zeros_shape = (_ceil(out, per_word), groups)
            gs = effective_group_size(group_size, in_features)
            if _ceil(in_features, gs) != groups:
                return layer_error(ckpt, prefix, "scales", f"{groups} groups, but in_features {in_features} with group_size {group_size} gives {_ceil(in_features, gs)}")
            if has_zeros and qz.shape != zeros_shape:
                return layer_error(ckpt, prefix, "qzeros", f"shape {list(qz.shape)}, expected {list(zeros_shape)} for compression_dim {dim} with scales {list(sc.shape)}")
            return NonOptimumLayout(dim, word, in_features, out, gs, has_zeros)

        fits = {dim: fit(dim) for dim in (1, 0)}
        ok = [f for f in fits.values() if isinstance(f, NonOptimumLayout)]
        if not ok:
            # Report the dimension the qweight's first axis points at (out rows: dim 1).
            raise fits[0] if qw.shape[0] != out and qw.shape[0] == _ceil(out, per_word) else fits[1]
        if len(ok) == 2 and per_word > 1:
            raise layer_error(
                ckpt, prefix, "qweight",
                f"shape {list(qw.shape)} with scales {list(sc.shape)} fits both compression_dim 1 (in_features {ok[0].in_features}) "
                f"and 0 (in_features {ok[1].in_features})",
            )
        found = ok[0]  # with one field per word both dims store the same array: read it as dim 1
        if ckpt.has(f"{prefix}.bias") and ckpt.info(f"{prefix}.bias").shape != (out,):
            raise layer_error(ckpt, prefix, "bias", f"shape {list(ckpt.info(f'{prefix}.bias').shape)}, expected [{out}]")
        if ckpt.has(f"{prefix}.g_idx"):
            expect_dtype(ckpt, f"{prefix}.g_idx", ("I32", "I64"))
            if ckpt.info(f"{prefix}.g_idx").shape != (found.in_features,):
                raise layer_error(ckpt, prefix, "g_idx", f"shape {list(ckpt.info(f'{prefix}.g_idx').shape)}, expected [{found.in_features}]")
        return found

    @classmethod
    def classify(cls, ckpt: Checkpoint, prefixes: list[str], bits: int, group_size: int) -> dict[str, NonOptimumLayout] | None:
        """Which of INC's layouts a checkpoint's layers are in, from shapes and dtypes only.

        Returns None when no layer is unmistakably non-optimum (the optimum GPTQ v1 layout, INC's
        default, is read as before), or every layer's layout when some are and none is unmistakably
        optimum. Raises FormatError for a checkpoint that mixes the two layouts, or for a layer of a
        non-optimum checkpoint that fits neither.
        """
        layouts: dict[str, NonOptimumLayout] = {}
        problems: dict[str, FormatError] = {}
        only_optimum, only_nonopt = [], []
        for p in prefixes:
            try:
                layouts[p] = cls.layout(ckpt, p, bits, group_size)
            except FormatError as e:
                problems[p] = e
            opt = optimum_fits(ckpt, p, bits, group_size)
            if opt and p not in layouts:
                only_optimum.append(p)
            elif p in layouts and not opt:
                only_nonopt.append(p)
        if not only_nonopt:
            return None
        if only_optimum:
            a, b = only_optimum[0], only_nonopt[0]
            raise FormatError(
                f"layers mix INC's optimum layout ({counted(len(only_optimum), 'layer')}, e.g. {a}: qweight "
                f"{ckpt.info(f'{a}.qweight').dtype} {list(ckpt.info(f'{a}.qweight').shape)}, scales [G, out]) and its "
                f"use_optimum_format=False layout ({counted(len(only_nonopt), 'layer')}, e.g. {b}: qweight "
                f"{ckpt.info(f'{b}.qweight').dtype} {list(ckpt.info(f'{b}.qweight').shape)}, scales [out, G])",
                file=ckpt.file_of(f"{b}.qweight"),
            )
        for p in prefixes:
            if p in problems:
                raise problems[p]
        return layouts

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def _layout_for(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> NonOptimumLayout:
        found = cls.layout(ckpt, prefix, fmt.bits, fmt.group_size)
        declared = (fmt.declared_config.get(LAYOUTS_KEY) or {}).get(prefix)
        if declared is not None and declared != found.describe():
            raise layer_error(ckpt, prefix, "qweight", f"stored as {found.describe()}, but detection recorded {declared}")
        return found

    @classmethod
    def _zeros(cls, ckpt: Checkpoint, prefix: str, lay: NonOptimumLayout, bits: int) -> torch.Tensor:
        """True zero points, uint8 [out, G]."""
        groups = _ceil(lay.in_features, lay.group_size)
        if not lay.has_zeros:
            return torch.full((lay.out_features, groups), 1 << (bits - 1), dtype=torch.uint8)
        qzeros = ckpt.read(f"{prefix}.qzeros")
        if lay.compression_dim == 1:
            return unpack_words(qzeros, bits, dim=1, count=groups)
        return unpack_words(qzeros, bits, dim=0, count=lay.out_features)

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        """Raw zero points as stored, [G, out]; symmetric layers store none and give the implicit 2**(b-1)."""
        lay = cls._layout_for(ckpt, prefix, fmt)
        return cls._zeros(ckpt, prefix, lay, fmt.bits).T.contiguous()

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        lay = cls._layout_for(ckpt, prefix, fmt)
        b = fmt.bits
        layer = QuantLinear(
            name=prefix,
            in_features=lay.in_features,
            out_features=lay.out_features,
            bits=b,
            group_size=lay.group_size,
            zeros=cls._zeros(ckpt, prefix, lay, b),
            scales=ckpt.read(f"{prefix}.scales").contiguous(),
            g_idx=ckpt.read(f"{prefix}.g_idx").to(torch.int32) if ckpt.has(f"{prefix}.g_idx") else None,
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if not lay.has_zeros:
            layer.notes.append("symmetric: two's-complement codes stored without qzeros, read as q + 2^(b-1) with z = 2^(b-1)")
        if codes:
            qweight = ckpt.read(f"{prefix}.qweight")
            if lay.compression_dim == 1:
                fields = unpack_words(qweight, b, dim=1, count=lay.in_features)
            else:
                fields = unpack_words(qweight, b, dim=0, count=lay.out_features)
            layer.codes = fields if lay.has_zeros else signed_to_unsigned(fields, b)
        return validated(ckpt, prefix, layer)

    # -- writing: not a target -------------------------------------------------------------
    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        return "INC's use_optimum_format=False layout is read only, not a target (INC's own load() cannot reload it); use inc or inc-hf"

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        raise FormatError(cls.check_writable(layer), tensor=f"{layer.name}.qweight")

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        raise FormatError(cls.check_writable(layer), tensor=f"{layer.name}.qweight")
