"""Who can load a checkpoint as it stands: the inference engines woqconv knows, and for each one that cannot,
the ``--to`` that fixes it.

The engines are listed here; what each engine makes of a format is declared by that format's own module
(``Target.engines`` for the checkpoints a target writes, ``Detection.engines`` for formats woqconv only
reads). This module names no format: it asks the declarations, and finds a fix by planning the conversion
into each target whose output the engine loads, in the order ``--to`` lists them, keeping the first that
is lossless (or, failing that, the first whose only loss is one the user can accept with a flag).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable


@dataclass(frozen=True)
class Engine:
    key: str
    label: str
    # Why it cannot load a format that declares nothing for it (it reads none of woqconv's outputs as is).
    otherwise: str = "does not read this format"


ENGINES: tuple[Engine, ...] = (
    Engine("transformers", "transformers + its quantizers"),
    Engine("vllm-cpu", "vLLM CPU"),
    Engine("vllm-cuda", "vLLM CUDA"),
    Engine("vllm-gaudi", "vLLM Gaudi (vllm-gaudi)"),
    Engine("inc-cpu", "INC CPU"),
    Engine("inc-gaudi", "INC Gaudi"),
    Engine("openvino", "OpenVINO (optimum-intel)", "reads OpenVINO IR only"),
    Engine("llama.cpp", "llama.cpp", "reads GGUF only, which woqconv does not write yet (its convert_hf_to_gguf.py reads a dense checkpoint "
                                      "and re-quantizes it, losing the calibrated integers)"),
)


@dataclass(frozen=True)
class Facts:
    """What engines care about in a checkpoint, from inspect's report. ``asym`` is None when only the tensor
    data could tell (a Hub repo inspected from its headers)."""

    format: str
    quant_method: str  # as the config says ("" for a target's output: its own)
    bits: frozenset[int]
    asym: bool | None
    g_idx: str  # none / trivial / block-uniform / scattered / unknown
    mixed: bool
    dims_multiple_of_32: bool  # every quantized layer's in and out features
    has_architecture: bool
    gaudi_cache: bool  # INC's Gaudi cache beside the weights, covering every layer
    scales_dtypes: tuple[str, ...] = ()
    declared_bits: int = 0  # the config's model-level bits (what a loader's config class checks first)
    declared_group_size: int = 0
    desc_act: bool | None = None  # as the config declares it (GPTQ's act-order flag)


@dataclass(frozen=True)
class Verdict:
    loads: bool | None  # None: unknown without the tensor data
    detail: str = ""


def bits_label(facts: Facts) -> str:
    """"4-bit", or "4/8-bit" for a mixed checkpoint."""
    return "/".join(map(str, sorted(facts.bits))) + "-bit"


def loads(detail: str = "") -> Verdict:
    return Verdict(True, detail)


def refuses(reason: str) -> Verdict:
    return Verdict(False, reason)


def needs_symmetry(facts: Facts, then: Callable[[], Verdict], reason: str) -> Verdict:
    """``then()`` for a symmetric checkpoint, a refusal (``reason``) for an asymmetric one, unknown when not read."""
    if facts.asym is None:
        return Verdict(None, f"unknown without the tensor data: {reason}")
    return refuses(reason) if facts.asym else then()


def vllm_cpu_kernel(facts, verdict: Verdict) -> Verdict:
    """What vLLM's CPU W4A16 kernel (CPUWNA16LinearKernel) adds to a format's vLLM verdict: uint4 / uint4b8 codes
    only, in and out features multiples of 32, bf16 or fp16 activations."""
    if verdict.loads is False:
        return verdict
    if facts.bits != {4}:
        return refuses(f"vLLM CPU's W4A16 kernel takes 4-bit codes only (uint4, uint4b8), not {bits_label(facts)}")
    if not facts.dims_multiple_of_32:
        return refuses("vLLM CPU's W4A16 kernel needs in and out features that are multiples of 32")
    return Verdict(verdict.loads, verdict.detail or "bf16 or fp16 activations")


def gaudi_verdict(facts, cached: bool = False) -> Verdict:
    """INC's Gaudi load of a checkpoint in one of its formats: uint4, no act-order; without a cache beside the
    weights it repacks every layer at each load."""
    if facts.bits != {4}:
        return refuses(f"INC's Gaudi module takes 4-bit codes only, not {bits_label(facts)}")
    if facts.g_idx == "scattered":
        return refuses("Gaudi runs no act-order: this checkpoint's g_idx is scattered")
    return loads("reads its Gaudi cache, no repacking" if cached else "repacks every layer at each load (a Gaudi target pre-bakes it)")


def vllm_reads_its_config(facts: Facts, verdict: Verdict) -> Verdict:
    """A checkpoint whose config says ``quant_method: auto-round`` reaches vLLM through its INC config, which picks
    a GPTQ or AWQ kernel by packing format: not the GPTQ/AWQ classes the declarations describe, and not measured."""
    if facts.quant_method == "auto-round":
        return Verdict(None, "vLLM reads quant_method auto-round through its INC config (not measured here)")
    return verdict


# What one format declares: engine key -> its verdict on a checkpoint of that format with these facts.
Declarations = Callable[[Facts], dict[str, Verdict]]


@dataclass
class EngineRow:
    engine: str
    label: str
    loads: bool | None
    detail: str
    fix: dict | None = None  # {"to", "flags", "lossless", "note"}: the conversion after which it loads


def verdicts(declare: Declarations | None, facts: Facts) -> dict[str, Verdict]:
    declared = declare(facts) if declare is not None else {}
    return {e.key: declared.get(e.key, refuses(e.otherwise)) for e in ENGINES}


def as_written_by(target, facts: Facts) -> Facts:
    """The facts of ``target``'s output from a source with ``facts``: its format, its g_idx (none where it keeps
    none), and whether a Gaudi cache lies beside it."""
    g_idx = facts.g_idx if target.keeps_g_idx else "none"
    return replace(facts, format=target.name, quant_method="", g_idx=g_idx, desc_act=g_idx in ("block-uniform", "scattered"),
                   gaudi_cache=bool(target.companion or target.default_hpu_cache))


def engine_table(facts: Facts, declare: Declarations | None, targets: dict, try_conversion: Callable[[str], dict | None] | None) -> list[EngineRow]:
    """One row per engine: loads as is, or why not and the fix. ``targets``: name -> Target (their ``engines``
    declarations); ``try_conversion(name)``: {"flags", "lossless", "note"} when converting into that target
    would succeed (losslessly, or with a flag), else None; None: no fix is looked for (no tensor data)."""
    rows = []
    tried: dict[str, dict | None] = {}
    for engine, verdict in zip(ENGINES, verdicts(declare, facts).values()):
        row = EngineRow(engine.key, engine.label, verdict.loads, verdict.detail)
        if verdict.loads is False and try_conversion is not None:
            lossy = None
            for name, target in targets.items():
                if name == facts.format or target.engines is None:
                    continue
                after = target.engines(as_written_by(target, facts)).get(engine.key)
                if after is None or after.loads is not True:
                    continue
                if name not in tried:
                    tried[name] = try_conversion(name)
                outcome = tried[name]
                if outcome is None:
                    continue
                fix = {"to": name, **outcome}
                if outcome["lossless"]:
                    row.fix = fix
                    break
                lossy = lossy or fix
            row.fix = row.fix or lossy
        rows.append(row)
    return rows
