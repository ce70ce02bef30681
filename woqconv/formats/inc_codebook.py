"""INC's nf4 / fp4 weight-only layers (``RTNConfig(dtype="nf4" | "fp4" | "fp4_e2m1")``), read into the
codebook IR (FORMATS.md 3.1, 4.6). Reading only: the ``nf4``/``fp4`` targets write bitsandbytes.

INC always stores these in its non-optimum layout (``use_optimum_format`` is forced off for
codebooks): ``qweight`` holds, per weight, INC's signed 4-bit code for a table entry (``NF4_BIT``
etc.) packed LSB-first like the integer layers; ``scales`` fp32 ``[out, G]`` is the group's absmax
divided by the table's largest magnitude; there are no zero points. INC dequantizes
``W = table[code] * scale`` in fp32.

The IR's table is laid out by INC's 4-bit field value (``code & 0xF``), so the stored fields are the
indices as they are. Groups run along each row; they become the IR's flat blocks exactly when
``group_size`` divides ``in_features`` (else a group would straddle rows), which is required.
"""

from __future__ import annotations

from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import CodebookLinear
from .base import LayerFamily, SourceFormat, layer_error
from .inc_nonoptimum import IncNonOptimumFamily, unpack_words

KEY = "inc-codebook"
_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
_FP4_BNB = [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -0.0625, 0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
_FP4_E2M1 = [-1.0, -2 / 3, -0.5, -1 / 3, -0.25, -1 / 6, -0.010416666666666666, 0.0, 0.010416666666666666,
             1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0]
# INC's (values, signed 4-bit codes) per dtype name (neural_compressor .../weight_only/utility.py).
TABLES = {
    "nf4": (_NF4, [7, 1, 2, 3, 4, 5, 6, 0, -8, -7, -6, -5, -4, -3, -2, -1]),
    "fp4": (_FP4_BNB, [-5, -6, -3, -4, -1, -2, -7, 0, 1, 6, 7, 4, 5, 2, 3]),
    "fp4_e2m1_bnb": (_FP4_BNB, [-5, -6, -3, -4, -1, -2, -7, 0, 1, 6, 7, 4, 5, 2, 3]),
    "fp4_e2m1": (_FP4_E2M1, [-1, -2, -3, -4, -5, -6, -7, 0, 1, 2, 3, 4, 5, 6, 7]),
}
QUANT_TYPE = {"nf4": "nf4", "fp4": "fp4", "fp4_e2m1_bnb": "fp4", "fp4_e2m1": "fp4-e2m1"}


def code_table(dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [16] table indexed by INC's 4-bit field, bool [16] which fields INC ever writes)."""
    values, codes = TABLES[dtype]
    table = torch.zeros(16, dtype=torch.float32)
    used = torch.zeros(16, dtype=torch.bool)
    fields = torch.tensor(codes) & 0xF
    table[fields] = torch.tensor(values, dtype=torch.float32)
    used[fields] = True
    return table, used


class IncCodebookFamily(LayerFamily, key=KEY):
    """INC nf4/fp4 layers (reading only)."""

    codebook = True
    # scale_bf16_to_fp8 is INC's Gaudi buffer: no codebook target has a place for it.
    suffixes = ("qweight", "scales", "bias", "scale_bf16_to_fp8")

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> CodebookLinear:
        dtype = fmt.declared_config["codebook_dtype"]
        lay = IncNonOptimumFamily.layout(ckpt, prefix, 4, fmt.group_size)
        if lay.has_zeros:
            raise layer_error(ckpt, prefix, "qzeros", f"INC {dtype} layers have no zero points, but this one stores qzeros")
        if ckpt.info(f"{prefix}.scales").dtype != "F32":
            raise layer_error(ckpt, prefix, "scales", f"dtype {ckpt.info(f'{prefix}.scales').dtype}: INC {dtype} scales are read as fp32 only")
        if lay.in_features % lay.group_size:
            raise layer_error(ckpt, prefix, "scales",
                              f"group_size {lay.group_size} does not divide in_features {lay.in_features}: a group would straddle rows")
        table, valid = code_table(dtype)
        scales = ckpt.read(f"{prefix}.scales")
        layer = CodebookLinear(
            name=prefix, in_features=lay.in_features, out_features=lay.out_features, blocksize=lay.group_size,
            quant_type=QUANT_TYPE[dtype], code=table, absmax=scales.reshape(-1).contiguous(), dtype=torch.float32,
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            words = ckpt.read(f"{prefix}.qweight")
            count = lay.in_features if lay.compression_dim == 1 else lay.out_features
            fields = unpack_words(words, 4, lay.compression_dim, count)
            layer.idx = fields.reshape(-1).contiguous()
            bad = ~valid[layer.idx.to(torch.int64)]
            if bool(bad.any()):
                field = int(layer.idx[bad.nonzero()[0, 0]])
                raise layer_error(ckpt, prefix, "qweight", f"{int(bad.sum())} weights hold 4-bit code {field:#x}, which INC's {dtype} table does not define")
        problem = layer.validate()
        if problem:
            raise layer_error(ckpt, prefix, "qweight", problem)
        return layer

    @classmethod
    def check_writable(cls, layer) -> str | None:
        return "INC's nf4/fp4 layout is read only; write bitsandbytes (`to=nf4` / `to=fp4`)"


def codebook_dtype(entries: list[dict], path) -> str:
    """The one codebook dtype all qconfig entries share, or FormatError."""
    dtypes = {str(e.get("dtype")) for e in entries}
    if len(dtypes) > 1:
        raise FormatError(f"modules use different codebook dtypes {sorted(dtypes)}", file=path)
    dtype = dtypes.pop()
    if dtype not in TABLES:
        raise FormatError(f"dtype {dtype!r} is not a codebook INC defines ({', '.join(TABLES)})", file=path)
    return dtype
