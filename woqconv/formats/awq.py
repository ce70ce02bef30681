"""AWQ GEMM layout (AutoAWQ ``version: gemm``, AutoRound ``auto_round:auto_awq``), FORMATS.md 2.1.

Per quantized linear:
  qweight int32 [in, out/8]   codes packed along out_features in AWQ's nibble order [0,2,4,6,1,3,5,7]
  qzeros  int32 [G, out/8]    raw zero points (no offset), same packing
  scales  float [G, out]
  bias    float [out]         optional
No g_idx: groups are always the contiguous blocks i // group_size. 4 bits only.
"""

from __future__ import annotations

from ..kernels import packing
from .._lazy import torch
from ..io.checkpoint import Checkpoint
from ..ir import GIdxKind, PackedCodes, QuantLinear
from ..io.safetensors_io import TensorSpec
from ..tensor_ops import Copy, Relayout, ZerosToRowwise
from ..errors import FormatError
from . import detect
from .base import (
    ZP_V2,
    Detection,
    LayerFamily,
    SourceFormat,
    expect_dtype,
    packed_source_words,
    layer_error,
    require,
    spec_of,
    validated,
)
from .base import effective_group_size
from .gptq import SCALE_DTYPES
from ..engines import loads, refuses, vllm_cpu_kernel, vllm_reads_its_config
from .targets import ByteRoute, ModelQuantSummary, Target, plain_gptq4, with_bias, zero_point_delta

BITS = 4


class AwqGemmFamily(LayerFamily, key="awq"):
    suffixes = ("qweight", "qzeros", "scales", "bias")
    raw_zero_points = True
    encodes_packed = True
    codes_layout = (1, packing.AWQ_ORDER)
    other_packing_message = "config declares AWQ but qweight {shape} has the GPTQ layout"

    @classmethod
    def geometry(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> tuple[int, int, int]:
        for suffix in ("qweight", "qzeros", "scales"):
            require(ckpt, f"{prefix}.{suffix}", suffix)
        expect_dtype(ckpt, f"{prefix}.qweight", ("I32",))
        expect_dtype(ckpt, f"{prefix}.qzeros", ("I32",))
        expect_dtype(ckpt, f"{prefix}.scales", SCALE_DTYPES)
        if fmt.bits != BITS:
            raise layer_error(ckpt, prefix, "qweight", f"AWQ GEMM holds 4-bit codes, config says {fmt.bits} bits")
        qw = ckpt.info(f"{prefix}.qweight").shape
        qz = ckpt.info(f"{prefix}.qzeros").shape
        sc = ckpt.info(f"{prefix}.scales").shape
        if len(qw) != 2 or len(qz) != 2 or len(sc) != 2:
            raise layer_error(ckpt, prefix, "qweight", f"expected 2-D qweight/qzeros/scales, got {list(qw)}, {list(qz)}, {list(sc)}")
        groups, out = sc
        if qw[1] * 8 != out:
            hint = " (that is the GPTQ layout)" if qw[1] == out else ""
            raise layer_error(ckpt, prefix, "qweight", f"shape {list(qw)} does not match scales {list(sc)} in the AWQ GEMM layout{hint}")
        in_features = qw[0]
        if qz != (groups, out // 8):
            raise layer_error(ckpt, prefix, "qzeros", f"shape {list(qz)}, expected {[groups, out // 8]}")
        gs = effective_group_size(fmt.group_size, in_features)
        if in_features % gs or in_features // gs != groups:
            raise layer_error(
                ckpt, prefix, "scales", f"{groups} groups, but in_features {in_features} with group_size {fmt.group_size} gives {in_features / gs:g}"
            )
        if ckpt.has(f"{prefix}.g_idx"):
            raise layer_error(ckpt, prefix, "g_idx", "AWQ GEMM has no g_idx, yet the checkpoint stores one")
        return in_features, out, gs

    @classmethod
    def stored_zero_fields(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> torch.Tensor:
        cls.geometry(ckpt, prefix, fmt)
        return packing.unpack(ckpt.read(f"{prefix}.qzeros"), BITS, dim=1, slot_order=packing.AWQ_ORDER)

    @classmethod
    def read(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat, *, codes: bool = True) -> QuantLinear:
        in_features, out, gs = cls.geometry(ckpt, prefix, fmt)
        zeros = packing.unpack(ckpt.read(f"{prefix}.qzeros"), BITS, dim=1, slot_order=packing.AWQ_ORDER)
        layer = QuantLinear(
            name=prefix,
            in_features=in_features,
            out_features=out,
            bits=BITS,
            group_size=gs,
            zeros=zeros.T.contiguous(),
            scales=ckpt.read(f"{prefix}.scales").T.contiguous(),
            bias=ckpt.read(f"{prefix}.bias") if ckpt.has(f"{prefix}.bias") else None,
        )
        if codes:
            layer.codes = packing.unpack(ckpt.read(f"{prefix}.qweight"), BITS, dim=1, slot_order=packing.AWQ_ORDER).T.contiguous()
        return validated(ckpt, prefix, layer)

    @classmethod
    def packed_codes(cls, ckpt: Checkpoint, prefix: str, fmt: SourceFormat) -> PackedCodes:
        return packed_source_words(ckpt, f"{prefix}.qweight", BITS, 1, packing.AWQ_ORDER)

    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        if layer.bits != BITS:
            return f"AWQ GEMM stores 4-bit codes only, not {layer.bits}-bit"
        if layer.out_features % 8:
            return f"AWQ GEMM needs out_features divisible by 8, got {layer.out_features}"
        if layer.in_features % layer.group_size:
            return f"AWQ GEMM needs in_features {layer.in_features} divisible by group_size {layer.group_size}"
        return None

    @classmethod
    def specs(cls, layer: QuantLinear) -> list[TensorSpec]:
        p, g, out = layer.name, layer.num_groups, layer.out_features
        specs = [
            TensorSpec(f"{p}.qweight", "I32", (layer.in_features, out // 8)),
            TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)),
            spec_of(f"{p}.scales", layer.scales.T),
        ]
        if layer.bias is not None:
            specs.append(spec_of(f"{p}.bias", layer.bias))
        return specs

    @classmethod
    def encode(cls, layer: QuantLinear, zero_point_convention: str) -> dict[str, torch.Tensor]:
        if layer.g_idx is not None:
            raise ValueError(f"{layer.name}: AWQ cannot store g_idx; relabel groups before encoding")
        p = layer.name
        tensors = {
            f"{p}.qweight": layer.pack_codes(dim=1, slot_order=packing.AWQ_ORDER),
            f"{p}.qzeros": packing.pack(layer.zeros.T, BITS, dim=1, slot_order=packing.AWQ_ORDER),
            f"{p}.scales": layer.scales.T.contiguous(),
        }
        if layer.bias is not None:
            tensors[f"{p}.bias"] = layer.bias
        return tensors


# -- detection ---------------------------------------------------------------------------------

AWQ_VERSIONS = ("gemm",)


class AwqDetection(Detection):
    """``quant_method: awq`` (AutoAWQ, llm-awq exports through transformers): the GEMM packing only."""

    quant_methods = ("awq",)
    transformers_config = "AwqConfig"
    transformers_needs = (("gptqmodel", "verify"), ("optimum", "verify"))

    @classmethod
    def from_config(cls, ckpt: Checkpoint, qc: dict, file: str, method: str) -> SourceFormat:
        where = ckpt.root / file
        detect.config_choice(qc, ("version", "format"), "gemm", AWQ_VERSIONS, "AWQ version", where)
        sym = qc.get("sym")
        if "zero_point" in qc:
            if isinstance(sym, bool) and sym == bool(qc["zero_point"]):
                # Every AWQ writer sets zero_point = not sym (FORMATS.md 2.3): both true, or both false, is no layout.
                raise FormatError(f"sym {sym} and zero_point {qc['zero_point']!r} contradict each other (sym means no zero point)",
                                  file=where)
            sym = not bool(qc["zero_point"])
        producer = detect.producer(qc, ckpt)
        return detect.affine_format(ckpt, qc, file, name="awq", family="awq", convention=ZP_V2, method=method,
                                    producer="autoawq-compatible" if producer == "unknown" else producer, sym=sym)


# -- target -----------------------------------------------------------------------------------

def awq_engines(facts) -> dict:
    """AWQ GEMM checkpoints as each engine reads them (vLLM 0.32's AWQConfig: 4-bit, with or without zero points)."""
    inc = refuses("INC's load(format=\"huggingface\") fails on AWQ checkpoints")
    return {"transformers": loads("with gptqmodel"), "vllm-cpu": vllm_reads_its_config(facts, vllm_cpu_kernel(facts, loads())),
            "vllm-cuda": vllm_reads_its_config(facts, loads()),
            "vllm-gaudi": loads("awq_hpu"), "inc-cpu": inc, "inc-gaudi": inc}


class AwqGemmTarget(Target):
    name = "awq"
    family = AwqGemmFamily
    zero_point_convention = ZP_V2
    keeps_g_idx = False
    engines = staticmethod(awq_engines)
    description = "AWQ GEMM (AutoAWQ / transformers + gptqmodel): 4-bit, interleaved, no g_idx"

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        declared_skip = summary.declared.get("modules_to_not_convert")
        skip = declared_skip if isinstance(declared_skip, list) else sorted(summary.unquantized_linears)
        return {
            "quant_method": "awq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            # qzeros are always written; zero_point false only tells loaders they all equal 8.
            "zero_point": not summary.sym,
            "version": "gemm",
            "modules_to_not_convert": skip or None,
        }

    def byte_route(self, layer, source_family, source_convention):
        """Plain 4-bit GPTQ: the codes re-laid out word by word (C, or numpy), the zero points re-packed in
        AWQ's order on their bytes, scales and bias copied; a trivial g_idx is dropped."""
        if not plain_gptq4(layer, source_family, source_convention) or layer.in_features % layer.group_size:
            return None
        p, g, out = layer.name, layer.num_groups, layer.out_features
        delta = zero_point_delta(source_convention, self.zero_point_convention)
        specs = [TensorSpec(f"{p}.qweight", "I32", (layer.in_features, out // 8)), TensorSpec(f"{p}.qzeros", "I32", (g, out // 8)),
                 TensorSpec(f"{p}.scales", layer.scales_dtype, (g, out))]
        ops = {f"{p}.qweight": Relayout(f"{p}.qweight", packing.AWQ_ORDER),
               f"{p}.qzeros": ZerosToRowwise(f"{p}.qzeros", g, out, delta, packing.AWQ_ORDER), f"{p}.scales": Copy(f"{p}.scales")}
        changes = ["trivial g_idx dropped"] if layer.g_idx_kind is GIdxKind.TRIVIAL else []
        return ByteRoute(*with_bias(layer, specs, ops), changes)
