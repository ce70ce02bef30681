"""Conversion targets: a layout family, a zero-point convention, and the config its loaders accept.

``prepare`` turns a source IR layer into what the target can hold without loss, or says why it
cannot (a refusal, never a silent approximation). ``quantization_config`` writes the config that
the target's real loaders (transformers + gptqmodel, AutoGPTQ, AutoAWQ) accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import GIdxKind, QuantLinear
from .awq import AwqGemmFamily
from .base import ZP_V1, ZP_V2, LayerFamily
from .gptq import GptqFamily


@dataclass
class ModelQuantSummary:
    """What a target's config needs to know about the whole converted model."""

    bits: int
    group_size: int  # as declared by the source (-1 kept)
    sym: bool
    desc_act: bool  # some layer keeps a non-trivial g_idx
    declared: dict  # the source's quantization_config
    unquantized_linears: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    layer: QuantLinear
    changes: list[str]  # what was done to the layer, e.g. "g_idx relabelled"
    refusal: str | None = None  # why the layer cannot be written; the converter aggregates these
    zero_point_zero_groups: int = 0


class Target:
    name: str
    family: type[LayerFamily]
    zero_point_convention: str
    description: str
    keeps_g_idx: bool

    def prepare(self, layer: QuantLinear) -> Prepared:
        problem = self.family.check_writable(layer)
        if problem:
            return Prepared(layer, [], problem)
        changes = []
        kind = layer.g_idx_kind
        if not self.keeps_g_idx and kind is not GIdxKind.NONE:
            if kind is GIdxKind.SCATTERED:
                return Prepared(
                    layer, [],
                    f"scattered act-order g_idx cannot be expressed in {self.name} (no g_idx); only requantization could, "
                    "or convert to gptq / gptq-v2, which keep g_idx",
                )
            layer = layer.with_contiguous_groups()
            changes.append("trivial g_idx dropped" if kind is GIdxKind.TRIVIAL else "block-uniform g_idx relabelled (group rows permuted)")
        if self.zero_point_convention == ZP_V1:
            zero = int((layer.zeros == 0).sum())
            if zero:
                return Prepared(layer, [], f"{zero} groups have zero point 0", zero_point_zero_groups=zero)
        return Prepared(layer, changes)

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        raise TypeError(f"target {self.name} does not define a config")

    def config_files(self, qc: dict) -> dict[str, dict]:
        """Extra JSON files (beside config.json) that this target's tools read."""
        return {}


def _valid_damp(declared: dict) -> float:
    meta = declared.get("meta") if isinstance(declared.get("meta"), dict) else {}
    for value in (declared.get("damp_percent"), meta.get("damp_percent")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
    # transformers' GPTQConfig and GPTQModel refuse 0 (INC's RTN export writes it); GPTQ's default.
    return 0.01


class _GptqTarget(Target):
    family = GptqFamily
    keeps_g_idx = True
    checkpoint_format: str

    def quantization_config(self, summary: ModelQuantSummary) -> dict:
        d = summary.declared
        qc = {
            "quant_method": "gptq",
            "bits": summary.bits,
            "group_size": summary.group_size,
            "desc_act": summary.desc_act,
            "sym": summary.sym,
            "damp_percent": _valid_damp(d),
            "true_sequential": bool(d.get("true_sequential", True)),
            "static_groups": False,
            "lm_head": False,
            "checkpoint_format": self.checkpoint_format,
            "format": self.checkpoint_format,
            "pack_dtype": "int32",
            "model_file_base_name": "model",
        }
        return qc

    def config_files(self, qc: dict) -> dict[str, dict]:
        # AutoGPTQ and GPTQModel read quantize_config.json when config.json lacks the section.
        return {"quantize_config.json": qc}


class GptqV1Target(_GptqTarget):
    name = "gptq"
    zero_point_convention = ZP_V1
    checkpoint_format = "gptq"
    description = "GPTQ v1 (AutoGPTQ / transformers / optimum / INC): zero points stored as z-1"


class GptqV2Target(_GptqTarget):
    name = "gptq-v2"
    zero_point_convention = ZP_V2
    checkpoint_format = "gptq_v2"
    description = "GPTQ v2 (GPTQModel): zero points stored as they are, z = 0 allowed"


class AwqGemmTarget(Target):
    name = "awq"
    family = AwqGemmFamily
    zero_point_convention = ZP_V2
    keeps_g_idx = False
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


TARGETS: dict[str, Target] = {t.name: t for t in (GptqV1Target(), GptqV2Target(), AwqGemmTarget())}
