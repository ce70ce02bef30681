"""Format adapters: one module per format family, found through registries, never imported by each other."""

from . import awq, bnb, gptq, inc, inc_codebook, inc_nonoptimum, openvino_ir  # noqa: F401  (importing registers the layout families)
from .base import LayerFamily, SourceFormat  # noqa: F401
from .targets import TARGETS, Target  # noqa: F401

# The files of a Hub repo some format reads or carries, beyond the safetensors weights and the model files
# every checkpoint has (checkpoint.MODEL_FILE_PATTERNS): each format names its own.
HUB_FILE_PATTERNS = tuple(dict.fromkeys(p for module in (gptq, inc, openvino_ir) for p in module.HUB_FILE_PATTERNS))
