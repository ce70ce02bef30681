"""woqconv: move 4-bit weight-only-quantized checkpoints between formats without losing a bit.

Python API (the CLI is a thin layer over it)::

    import woqconv
    report = woqconv.inspect("llama-gptq")                      # what is it, as found in the data
    woqconv.convert("llama-gptq", "llama-awq", to="awq")        # lossless or refused (SRC: a directory or org/name)
    woqconv.verify("llama-awq", against="llama-gptq")           # loaded by its real loader, compared
    with woqconv.open_checkpoint("llama-gptq") as ckpt:         # the IR, one layer at a time
        for layer in ckpt.iter_layers():
            w = layer.dequantize()
"""

# Importing woqconv imports no torch: every module takes it from ``_lazy``, which imports it on first use
# (see _lazy.py), so the API below costs about 0.15 s to import, most of it numpy. It is imported
# eagerly, not through a module ``__getattr__``: ``woqconv.convert`` is both this function and a
# subpackage, and the first ``import woqconv.convert.<x>`` anywhere would rebind a lazily provided name
# to the subpackage.
from .convert import ConvertReport
from .pipeline import convert
from .errors import FormatError, OutputError, RefusedConversion, WoqconvError
from .formats import TARGETS
from .inspection import InspectReport, inspect
from .ir import CodebookLinear, GIdxKind, QuantLinear
from .source import QuantizedCheckpoint, open_checkpoint

__version__ = "0.1.0"


def __getattr__(name: str):
    """``verify`` and ``VerifyReport``, imported on first use: the verifier imports torch and starts
    loaders, which ``import woqconv`` (and ``woqconv inspect``) should not pay for. Unlike ``convert``,
    no subpackage shares their names, so a module ``__getattr__`` serves them."""
    if name in ("verify", "VerifyReport"):
        from .runtime import verify as _verify_module

        return getattr(_verify_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CodebookLinear",
    "ConvertReport",
    "FormatError",
    "GIdxKind",
    "InspectReport",
    "OutputError",
    "QuantLinear",
    "QuantizedCheckpoint",
    "RefusedConversion",
    "TARGETS",
    "VerifyReport",
    "WoqconvError",
    "__version__",
    "convert",
    "inspect",
    "open_checkpoint",
    "verify",
]
