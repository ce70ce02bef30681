"""bitsandbytes 4-bit (NF4 / FP4) as transformers saves it (FORMATS.md 4), read into and written from
the codebook IR.

Per quantized linear ``<p>`` (``Linear4bit._save_to_state_dict``):

  <p>.weight                            packed indices, 2 per byte, HIGH nibble first, over the row-major
                                        flattened [out, in] weight; any ``bnb_4bit_quant_storage`` dtype
                                        (its raw bytes are what count), shape [n_bytes / itemsize, 1]
  <p>.weight.absmax                     fp32 [n_blocks], or uint8 codes when double-quantized
  <p>.weight.quant_map                  fp32 [16], the table the indices point into
  <p>.weight.nested_absmax              fp32 [ceil(n_blocks / nested_blocksize)]   (double quant only)
  <p>.weight.nested_quant_map           fp32 [256]                                (double quant only)
  <p>.weight.quant_state.bitsandbytes__<nf4|fp4>   uint8 bytes of a JSON object: quant_type, blocksize,
                                        dtype, shape (+ nested_blocksize, nested_dtype, nested_offset)
  <p>.bias                              optional, the model dtype

Blocksize and dtype are per layer (in the JSON), not in config.json.
"""

from __future__ import annotations

import functools
import json
import copy
from dataclasses import dataclass, replace

from ..kernels import packing
from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..errors import FormatError
from ..ir import CodebookLinear
from ..requant import CodebookRecipe
from ..io.safetensors_io import TensorSpec
from ..engines import loads
from .base import Detection, LayerFamily, SourceFormat, expect_dtype, layer_error, spec_of
from .targets import LoadExample, ModelQuantSummary, Prepared, Target

KEY = "bnb"
REQUANT_BLOCKSIZE = 64  # bitsandbytes' blocksize under transformers
QUANT_TYPES = ("nf4", "fp4")
STATE_SUFFIX = ".weight.quant_state.bitsandbytes__"
# bitsandbytes' kernels take these blocksizes (its quantize_4bit asserts on this list).
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
WEIGHT_DTYPES = ("float16", "bfloat16", "float32")  # torch dtype names
NESTED_BLOCKSIZE = 256  # what bitsandbytes uses for double quantization

# bitsandbytes' tables (functional.get_4bit_type), as the fp32 values it stores in quant_map.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
# FP4: index = sign bit | 3 magnitude bits, values normalised by their largest magnitude (12), in fp32.
# Index 8 ("negative zero") holds +0.0 in the stored table, as bitsandbytes builds it from the integer 0.
FP4_VALUES = (0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3)


@functools.cache
def code_table(quant_type: str) -> torch.Tensor:
    """bitsandbytes' fp32 table for ``quant_type`` ("nf4" or "fp4"), built on first use."""
    if quant_type == "nf4":
        return torch.tensor(NF4_VALUES, dtype=torch.float32)
    if quant_type == "fp4":
        return torch.tensor(FP4_VALUES, dtype=torch.float32) / 12
    raise KeyError(quant_type)


def dynamic_map_signed() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" map (``create_dynamic_map(signed=True)``), the table of
    double-quantized absmax codes. For each decimal exponent ``e = 0..6`` it holds the ``2**e``
    midpoints of ``2**e + 1`` evenly spaced fractions in [0.1, 1], scaled by ``10**(e - 6)``, and
    their negatives; then 0 and 1; sorted. Computed with the same fp32 operations, so equal bit for bit."""
    values: list[float] = []
    for e in range(7):
        boundaries = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        values += ((10 ** (e - 6)) * means).tolist()
        values += (-(10 ** (e - 6)) * means).tolist()
    values += [0.0, 1.0]
    values.sort()
    return torch.tensor(values, dtype=torch.float32)


@dataclass(frozen=True)
class QuantState:
    """The per-layer JSON, checked."""

    quant_type: str
    blocksize: int
    dtype: torch.dtype
    shape: tuple[int, int]
    nested_blocksize: int | None = None
    nested_offset: float | None = None


def _state_tensor(ckpt: Checkpoint, prefix: str) -> str:
    for qt in QUANT_TYPES:
        if ckpt.has(f"{prefix}{STATE_SUFFIX}{qt}"):
            return f"{prefix}{STATE_SUFFIX}{qt}"
    raise FormatError("quantized layer has no quant_state JSON tensor", file=ckpt.root, tensor=f"{prefix}{STATE_SUFFIX}nf4")


def parse_quant_state(ckpt: Checkpoint, prefix: str) -> QuantState:
    name = _state_tensor(ckpt, prefix)
    file = ckpt.file_of(name)
    expect_dtype(ckpt, name, ("U8", "I8"))

    def bad(problem: str) -> FormatError:
        return FormatError(f"quant_state {problem}", file=file, tensor=name)

    try:
        state = json.loads(bytes(ckpt.read(name).view(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"is not valid UTF-8 JSON ({e})") from None
    if not isinstance(state, dict):
        raise bad("must be a JSON object")
    qt = state.get("quant_type")
    if qt not in QUANT_TYPES:
        raise bad(f"quant_type {qt!r} is not one of {', '.join(QUANT_TYPES)}")
    if name.rsplit("__", 1)[1] != qt:
        raise bad(f"quant_type {qt!r} disagrees with the tensor name's {name.rsplit('__', 1)[1]!r}")
    bs = state.get("blocksize")
    if not isinstance(bs, int) or isinstance(bs, bool) or bs <= 0 or bs & (bs - 1):
        raise bad(f"blocksize {bs!r} is not a power of two")
    if bs not in BLOCKSIZES:
        raise bad(f"blocksize {bs} is outside what bitsandbytes supports ({BLOCKSIZES[0]}..{BLOCKSIZES[-1]})")
    dtype_name = str(state.get("dtype")).replace("torch.", "")
    dtype = getattr(torch, dtype_name) if dtype_name in WEIGHT_DTYPES else None
    if dtype is None:
        raise bad(f"dtype {state.get('dtype')!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    shape = state.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise bad(f"shape {shape!r} is not [out_features, in_features]")
    nbs = state.get("nested_blocksize")
    offset = state.get("nested_offset")
    if nbs is not None or offset is not None:
        if not isinstance(nbs, int) or isinstance(nbs, bool) or nbs <= 0:
            raise bad(f"nested_blocksize {nbs!r} is not a positive integer")
        if not isinstance(offset, (int, float)) or isinstance(offset, bool):
            raise bad(f"nested_offset {offset!r} is not a number")
        if str(state.get("nested_dtype", "float32")).replace("torch.", "") != "float32":
            raise bad(f"nested_dtype {state.get('nested_dtype')!r} is not float32")
    return QuantState(qt, bs, dtype, (shape[0], shape[1]), nbs, None if offset is None else float(offset))


def undo_double_quant(codes: torch.Tensor, nested_absmax: torch.Tensor, nested_map: torch.Tensor,
                      nested_blocksize: int, offset: float) -> torch.Tensor:
    """fp32 absmax from its 8-bit codes, the same operations in the same order as bitsandbytes'
    ``dequantize_blockwise`` + ``absmax += offset`` (bit-exact, FORMATS.md 4.4)."""
    n = codes.numel()
    blocks = torch.arange(n) // nested_blocksize
    absmax = nested_map[codes.to(torch.int64)] * nested_absmax[blocks]
    absmax += offset
    return absmax


def double_quant(absmax: torch.Tensor, nested_blocksize: int = NESTED_BLOCKSIZE):
    """(uint8 codes, fp32 nested_absmax, offset) for fp32 absmax: subtract the mean, scale each block of
    ``nested_blocksize`` by its largest magnitude, take the nearest entry of the dynamic map. Lossy."""
    offset = float(absmax.mean())
    x = absmax - offset
    n = x.numel()
    pad = (-n) % nested_blocksize
    blocks = torch.cat((x, x.new_zeros(pad))).view(-1, nested_blocksize)
    nested = blocks.abs().amax(dim=1)
    normed = blocks / nested.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    table = dynamic_map_signed()
    mid = (table[1:] + table[:-1]) / 2
    codes = torch.bucketize(normed.reshape(-1)[:n], mid).to(torch.uint8)
    return codes, nested.contiguous(), offset


class BnbFamily(LayerFamily, key=KEY):
    """bitsandbytes Linear4bit layers (NF4 / FP4)."""

    codebook = True
    suffixes = (
        "weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
        "weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4", "bias",
    )

    @classmethod
    def layer_prefixes(cls, ckpt: Checkpoint) -> list[str]:
        return sorted({n[: n.index(STATE_SUFFIX)] for n in ckpt.locations if STATE_SUFFIX in n})

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat | None = None, *, codes: bool = True) -> CodebookLinear:
        state = parse_quant_state(ckpt, prefix)
        out, inf = state.shape
        numel = out * inf
        n_blocks = -(-numel // state.blocksize)
        w, am, qm = f"{prefix}.weight", f"{prefix}.weight.absmax", f"{prefix}.weight.quant_map"
        for t in (w, am, qm):
            if not ckpt.has(t):
                raise FormatError(f"quantized layer has no {t[len(prefix) + 1:]} tensor", file=ckpt.root, tensor=t)
        if ckpt.info(w).nbytes != -(-numel // 2):
            raise layer_error(ckpt, prefix, "weight",
                              f"holds {ckpt.info(w).nbytes} bytes, but quant_state shape {list(state.shape)} needs {-(-numel // 2)} (2 indices per byte)")
        expect_dtype(ckpt, qm, ("F32",))
        if ckpt.info(qm).shape != (16,):
            raise layer_error(ckpt, prefix, "weight.quant_map", f"shape {list(ckpt.info(qm).shape)}, expected [16]")
        dq = state.nested_blocksize is not None
        if ckpt.info(am).numel != n_blocks:
            raise layer_error(ckpt, prefix, "weight.absmax",
                              f"{ckpt.info(am).numel} values, but quant_state shape {list(state.shape)} with blocksize {state.blocksize} has {n_blocks} blocks")
        if dq:
            expect_dtype(ckpt, am, ("U8",))
            nested, nmap = f"{prefix}.weight.nested_absmax", f"{prefix}.weight.nested_quant_map"
            for t in (nested, nmap):
                if not ckpt.has(t):
                    raise FormatError(f"quant_state says double-quantized, but there is no {t[len(prefix) + 1:]} tensor", file=ckpt.root, tensor=t)
                expect_dtype(ckpt, t, ("F32",))
            want = -(-n_blocks // state.nested_blocksize)
            if ckpt.info(nested).numel != want:
                raise layer_error(ckpt, prefix, "weight.nested_absmax",
                                  f"{ckpt.info(nested).numel} values, expected {want} ({n_blocks} blocks in nested blocks of {state.nested_blocksize})")
            if ckpt.info(nmap).shape != (256,):
                raise layer_error(ckpt, prefix, "weight.nested_quant_map", f"shape {list(ckpt.info(nmap).shape)}, expected [256]")
            absmax = undo_double_quant(ckpt.read(am).reshape(-1), ckpt.read(nested).reshape(-1), ckpt.read(nmap),
                                       state.nested_blocksize, state.nested_offset)
        else:
            expect_dtype(ckpt, am, ("F32",))
            absmax = ckpt.read(am).reshape(-1)
        bias = ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None
        layer = CodebookLinear(
            name=prefix, in_features=inf, out_features=out, blocksize=state.blocksize, quant_type=state.quant_type,
            code=ckpt.read(qm).reshape(16), absmax=absmax, dtype=state.dtype, bias=bias, double_quant=dq,
        )
        if codes:
            raw = ckpt.shards[ckpt.locations[w]].read_raw(w)  # any quant_storage dtype: the bytes count
            layer.idx = packing.unpack_nibbles_high_first(raw, numel)
        problem = layer.validate()
        if problem:
            raise layer_error(ckpt, prefix, "weight", problem)
        return layer

    # -- writing ---------------------------------------------------------------------------
    @classmethod
    def check_writable(cls, layer) -> str | None:
        if not isinstance(layer, CodebookLinear):
            return "bitsandbytes stores a 16-entry code table per layer, not affine integers"
        if layer.blocksize not in BLOCKSIZES:
            return f"blocksize {layer.blocksize} is not one bitsandbytes supports ({BLOCKSIZES[0]}..{BLOCKSIZES[-1]}, powers of two)"
        if _dtype_name(layer.dtype) not in WEIGHT_DTYPES:
            return f"weight dtype {layer.dtype} is not float16, bfloat16 or float32"
        return None

    @classmethod
    def quant_state_json(cls, layer: CodebookLinear, nested_offset: float | None = None) -> bytes:
        """The per-layer JSON. With double quantization its length must not depend on the offset's digits
        (tensor sizes are planned before the offset is known), so it is padded with trailing spaces to
        the length the longest float repr would give."""
        state = {"quant_type": layer.quant_type, "blocksize": layer.blocksize, "dtype": _dtype_name(layer.dtype),
                 "shape": [layer.out_features, layer.in_features]}
        if not layer.double_quant:
            return json.dumps(state).encode("utf-8")
        state.update(nested_blocksize=NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=0.0)
        longest = len(json.dumps(state)) - len("0.0") + len("-2.2250738585072014e-308")
        state["nested_offset"] = float(nested_offset or 0.0)
        return json.dumps(state).ljust(longest).encode("utf-8")

    @classmethod
    def specs(cls, layer: CodebookLinear) -> list[TensorSpec]:
        p = layer.name
        specs = [TensorSpec(f"{p}.weight", "U8", (-(-layer.numel // 2), 1))]
        if layer.double_quant:
            nested = -(-layer.num_blocks // NESTED_BLOCKSIZE)
            specs += [
                TensorSpec(f"{p}.weight.absmax", "U8", (layer.num_blocks,)),
                TensorSpec(f"{p}.weight.nested_absmax", "F32", (nested,)),
                TensorSpec(f"{p}.weight.nested_quant_map", "F32", (256,)),
            ]
        else:
            specs.append(TensorSpec(f"{p}.weight.absmax", "F32", (layer.num_blocks,)))
        specs.append(TensorSpec(f"{p}.weight.quant_map", "F32", (16,)))
        specs.append(TensorSpec(f"{p}{STATE_SUFFIX}{layer.quant_type}", "U8", (len(cls.quant_state_json(layer)),)))
        if layer.bias is not None:
            specs.append(spec_of(f"{p}.bias", layer.bias))
        return specs

    @classmethod
    def encode(cls, layer: CodebookLinear, zero_point_convention: str | None = None) -> dict[str, torch.Tensor]:
        p = layer.name
        tensors = {f"{p}.weight": packing.pack_nibbles_high_first(layer.idx).view(-1, 1)}
        if layer.double_quant:
            codes, nested, offset = double_quant(layer.absmax)
            tensors[f"{p}.weight.absmax"] = codes
            tensors[f"{p}.weight.nested_absmax"] = nested
            tensors[f"{p}.weight.nested_quant_map"] = dynamic_map_signed()
        else:
            tensors[f"{p}.weight.absmax"] = layer.absmax.to(torch.float32).contiguous()
            offset = None
        tensors[f"{p}.weight.quant_map"] = layer.code.to(torch.float32).contiguous()
        state = cls.quant_state_json(layer, offset)
        tensors[f"{p}{STATE_SUFFIX}{layer.quant_type}"] = torch.frombuffer(bytearray(state), dtype=torch.uint8)
        if layer.bias is not None:
            tensors[f"{p}.bias"] = layer.bias.contiguous()
        return tensors


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- detection ---------------------------------------------------------------------------------

def bnb_engines(facts) -> dict:
    """bitsandbytes 4-bit: transformers with bitsandbytes only (vLLM 0.32 has no bitsandbytes method)."""
    return {"transformers": loads("with bitsandbytes")}


class BnbDetection(Detection):
    """bitsandbytes 4-bit: the config says 4-bit and the quant type; each layer's quant_state JSON holds the
    blocksize and dtype, and the first one stands for the model in reports."""

    quant_methods = ("bitsandbytes",)
    transformers_config = "BitsAndBytesConfig"
    engine_declarations = {"bnb-nf4": lambda facts: bnb_engines(facts), "bnb-fp4": lambda facts: bnb_engines(facts)}
    transformers_needs = (("bitsandbytes", "bnb"),)

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        where = ckpt.root / file
        if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
            raise FormatError("bitsandbytes 8-bit (LLM.int8) checkpoints are not supported; only 4-bit NF4/FP4", file=where)
        if not (qc.get("load_in_4bit") or qc.get("_load_in_4bit")):
            raise FormatError("bitsandbytes config has neither load_in_4bit nor load_in_8bit", file=where)
        declared = str(qc.get("bnb_4bit_quant_type", "fp4"))
        if declared not in QUANT_TYPES:
            raise FormatError(f"bnb_4bit_quant_type {declared!r} is not one of {', '.join(QUANT_TYPES)}", file=where)
        prefixes = BnbFamily.layer_prefixes(ckpt)
        if not prefixes:
            raise FormatError("config declares bitsandbytes 4-bit but no tensor holds a quant_state", file=ckpt.root)
        first = parse_quant_state(ckpt, prefixes[0])
        if first.quant_type != declared:
            raise FormatError(f"config declares bnb_4bit_quant_type {declared!r}, but {prefixes[0]} is {first.quant_type}", file=where)
        dq = first.nested_blocksize is not None
        return SourceFormat(
            name=f"bnb-{first.quant_type}", family=KEY, bits=4, group_size=first.blocksize, sym=None,
            zero_point_convention="none", quant_method="bitsandbytes", producer="bitsandbytes",
            declared_config={**qc, "double_quant_stored": dq}, config_file=file,
        )


# -- targets ----------------------------------------------------------------------------------

def table_mapping(code: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """For each of the 16 entries of ``code``, the index of the bit-identical value in ``table``; None
    if some entry has no exact twin (then only requantization can move the layer to ``table``)."""
    src = code.to(torch.float32).contiguous().view(torch.int32)
    dst = table.to(torch.float32).contiguous().view(torch.int32)
    # +0.0 and -0.0 give the same products up to the sign of zero; compare them as one value.
    src = torch.where(src == torch.tensor(-(2**31), dtype=torch.int32), torch.zeros_like(src), src)
    dst = torch.where(dst == torch.tensor(-(2**31), dtype=torch.int32), torch.zeros_like(dst), dst)
    hits = src[:, None] == dst[None, :]
    if not bool(hits.any(dim=1).all()):
        return None
    first = hits.to(torch.int8).argmax(dim=1)
    # An entry that already matches in place keeps its index (FP4 holds 0.0 twice: at 0 and 8).
    return torch.where(hits.diagonal(), torch.arange(16), first)


def double_quant_loss(absmax: torch.Tensor) -> dict:
    """How storing ``absmax`` double-quantized (8-bit codes per 256-block) changes it."""
    codes, nested, offset = double_quant(absmax)
    back = undo_double_quant(codes, nested, dynamic_map_signed(), NESTED_BLOCKSIZE, offset)
    changed = back != absmax
    rel = ((back - absmax).abs() / absmax.abs().clamp_min(torch.finfo(torch.float32).tiny))
    return {"kind": "double-quant", "absmax_changed": int(changed.sum()), "absmax_total": absmax.numel(),
            "max_rel_change": float(rel.max()) if rel.numel() else 0.0}


class BnbTarget(Target):
    """bitsandbytes 4-bit, as transformers loads it: the code table is bitsandbytes' own."""

    family = BnbFamily
    zero_point_convention = None
    keeps_g_idx = False
    quant_type: str
    double_quant = False  # store absmax double-quantized (lossy); set through configured()
    double_quant_option = True
    load_examples = (LoadExample(
        "With transformers (bitsandbytes on CPU/CUDA):",
        'from transformers import AutoModelForCausalLM{tokenizer_import}\n\n'
        'model = AutoModelForCausalLM.from_pretrained("{repo}"){tokenizer}'),)

    def requant_recipe(self, layer, method: str) -> CodebookRecipe:
        """bitsandbytes blocks of 64 (its blocksize under transformers), in the source's weight dtype."""
        dtype = layer.dtype if isinstance(layer, CodebookLinear) else layer.scales.dtype
        return CodebookRecipe(self.quant_type, code_table(self.quant_type), REQUANT_BLOCKSIZE, dtype, method)

    def configured(self, *, double_quant: bool = False) -> "BnbTarget":
        t = copy.copy(self)
        t.double_quant = double_quant
        return t

    def prepare(self, layer) -> Prepared:
        if not isinstance(layer, CodebookLinear):
            return Prepared(
                layer, [],
                f"{layer.bits}-bit affine integers are not values of the {self.quant_type} code table: writing {self.name} "
                f"means new indices for every weight (lossy); `requantize` would fit {self.quant_type} blocks to the "
                "dequantized weights and report the error per layer",
                requantizable=True,
            )
        problem = self.family.check_writable(layer)
        if problem:
            return Prepared(layer, [], problem)
        table = code_table(self.quant_type)
        perm = table_mapping(layer.code, table)
        if perm is None:
            return Prepared(
                layer, [],
                f"its {layer.quant_type} table holds values bitsandbytes' {self.quant_type} table does not (the products "
                "would change); `requantize` would fit new indices and absmax and report the error per layer",
                requantizable=True,
            )
        changes = []
        if not torch.equal(perm, torch.arange(16)):
            changes.append(f"indices renumbered to bitsandbytes' {self.quant_type} table order")
        if layer.double_quant and not self.double_quant:
            changes.append("double quantization undone: absmax stored as the exact fp32 values")
        idx = perm.to(torch.uint8)[layer.idx.to(torch.int64)] if layer.idx is not None else None
        new = replace(layer, code=table.clone(), quant_type=self.quant_type, idx=idx, double_quant=self.double_quant)
        lossy = double_quant_loss(layer.absmax) if self.double_quant else None
        return Prepared(new, changes, lossy=lossy)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        dtypes = {str(layer.dtype).replace("torch.", "") for layer in summary.layers}
        compute = dtypes.pop() if len(dtypes) == 1 else "float32"
        skip = sorted(summary.unquantized_linears)
        return {
            "_load_in_4bit": True,
            "_load_in_8bit": False,
            "bnb_4bit_compute_dtype": compute,
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.quant_type,
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": skip or None,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": True,
            "load_in_8bit": False,
            "quant_method": "bitsandbytes",
        }


class Nf4Target(BnbTarget):
    name = "nf4"
    engines = staticmethod(bnb_engines)
    quant_type = "nf4"
    description = "bitsandbytes NF4 (transformers + bitsandbytes), blocks of 64 by default"


class Fp4Target(BnbTarget):
    name = "fp4"
    engines = staticmethod(bnb_engines)
    quant_type = "fp4"
    description = "bitsandbytes FP4 (transformers + bitsandbytes)"
