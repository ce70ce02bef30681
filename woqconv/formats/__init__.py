"""Format adapters: one module per format family, found through registries, never imported by each other."""

from . import awq, bnb, gptq, inc, inc_codebook, inc_nonoptimum  # noqa: F401  (importing registers the layout families)
from .base import LayerFamily, SourceFormat  # noqa: F401
from .targets import TARGETS, Target  # noqa: F401
