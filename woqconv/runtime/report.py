"""What ``woqconv verify`` reports: its checks, its pass limits and the report itself (no torch, no loaders)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import WoqconvError


@dataclass
class Thresholds:
    """Pass limits. ``lossless`` for exact conversions run in fp32, ``bf16`` for Gaudi's bf16 path."""

    max_abs_logit: float = 1e-3  # auto-round's own kernels differ from gptqmodel's by up to 6e-4 on equal integers
    min_cosine: float = 0.99999
    min_top1: float = 0.99
    max_ppl_rel: float = 1e-3
    bf16_max_abs_logit: float = 0.05
    bf16_min_cosine: float = 0.999
    bf16_min_top1: float = 0.95
    bf16_max_ppl_rel: float = 0.02
    bf16_max_weight_rel_fro: float = 5e-3  # bf16 has 8 mantissa bits: 2^-9 worst case per scale
    # A requantized output (codebook <-> affine, act-order refitted) is compared by its weight error and
    # by how close it runs to the source, not for equality. 4-bit requantization of NF4 data costs
    # ~8-9 % relative Frobenius error (see the convert report).
    requant_max_weight_rel_fro: float = 0.15
    requant_min_cosine: float = 0.95
    requant_max_ppl_rel: float = 0.05
    # bitsandbytes' CPU kernel repacks absmax to bf16 on its first forward (PEERS.md 3.3), so on CPU it
    # is off the exact fp32 dequantization by ~5e-3 in the logits, on its own checkpoints too.
    bnb_cpu_max_abs_logit: float = 0.02
    bnb_cpu_min_cosine: float = 0.9999
    # GPTQModel's own loader (mixed-precision GPTQ, whose per-module `dynamic` transformers ignores) loads in
    # fp16 only: dense tensors stored wider (an OpenVINO source's fp32 embedding) round to 11 bits.
    fp16_max_abs_logit: float = 0.02
    fp16_min_cosine: float = 0.9999


def parse_thresholds(pairs: list[str]) -> Thresholds:
    """``["max_abs_logit=2e-3", ...]`` -> Thresholds with those limits changed."""
    t = Thresholds()
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not hasattr(t, name) or not value:
            raise WoqconvError(f"--threshold {pair!r}: expected NAME=VALUE with NAME one of {', '.join(vars(t))}")
        try:
            setattr(t, name, float(value))
        except ValueError:
            raise WoqconvError(f"--threshold {pair!r}: {value!r} is not a number") from None
    return t


@dataclass
class Check:
    check: str
    passed: bool
    detail: str
    layer: str | None = None
    # A loss the user accepted when converting, as this check measured it: {"kind": "bf16 scales",
    # "changed": n, "total": m, "max_rel_change": x}. None where the layer is the source's exactly.
    accepted: dict | None = None


@dataclass
class VerifyReport:
    path: str
    against: str | None
    format: str
    device: str | None = None
    loader: str | None = None
    reference: str | None = None
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def weights_summary(self) -> str | None:
        """The passing per-layer weights checks in one phrase: bit-identical, or which accepted loss and how much."""
        passed = [c for c in self.checks if c.check == "weights" and c.passed]
        if not passed:
            return None
        accepted = [c.accepted for c in passed if c.accepted]
        if not accepted:
            return "every layer bit-identical to the source"
        kinds = sorted({a["kind"] for a in accepted})
        changed, total = sum(a["changed"] for a in accepted), sum(a["total"] for a in accepted)
        worst = max(a["max_rel_change"] for a in accepted)
        same = len(passed) - len(accepted)
        return (f"{len(accepted)} with {' and '.join(kinds)} as accepted ({changed:,} of {total:,} values changed, largest relative "
                f"change {worst:.3g})" + (f"; {same} bit-identical" if same else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["weights_summary"] = self.weights_summary()
        return d


# The check of a layer whose integers were refitted (not the source's): judged by its weight error. Its
# own name, so that the run check and the report can tell such layers from bit-identical ones.
REQUANTIZED = "weights (requantized)"
