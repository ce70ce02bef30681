"""Pick the best device present: Gaudi (HPU) when habana_frameworks imports, else CUDA, else CPU."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import WoqconvError

CHOICES = ("auto", "hpu", "cuda", "cpu")


@dataclass(frozen=True)
class Device:
    kind: str  # "hpu", "cuda" or "cpu"
    reason: str  # why this one, for the report


def _hpu_available() -> bool:
    # Importing habana_frameworks.torch registers the "hpu" device with torch; without it there is none.
    if importlib.util.find_spec("habana_frameworks") is None:
        return False
    try:
        import habana_frameworks.torch  # noqa: F401
        import torch

        return bool(torch.hpu.is_available())
    except Exception:
        return False


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def select_device(requested: str = "auto") -> Device:
    """Resolve ``auto|hpu|cuda|cpu`` to a present device; asking for an absent one is an error."""
    if requested not in CHOICES:
        raise WoqconvError(f"device must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested == "auto":
        if _hpu_available():
            return Device("hpu", "habana_frameworks imports and an HPU is present")
        if _cuda_available():
            return Device("cuda", "no HPU; CUDA is present")
        return Device("cpu", "no HPU (habana_frameworks not importable) and no CUDA")
    if requested == "hpu" and not _hpu_available():
        raise WoqconvError("device hpu requested, but habana_frameworks is not importable or no HPU is present")
    if requested == "cuda" and not _cuda_available():
        raise WoqconvError("device cuda requested, but torch sees no CUDA device")
    return Device(requested, "requested")
