"""Format adapters: one module per format family, found through registries.

Importing a format module registers what it defines: its layer families (``LayerFamily`` subclasses with a
key), its detections (``Detection`` subclasses) and its targets (``Target`` subclasses with a name), each in
definition order. The modules are imported here in the order ``--to`` lists the targets.
"""

from . import gptq, awq, autoround, inc, inc_hpu_cache, inc_codebook, inc_nonoptimum, bnb, openvino, compressed_tensors, dense  # noqa: F401  (registers)
from .base import Detection, LayerFamily, SourceFormat  # noqa: F401
from .targets import TARGETS, Target  # noqa: F401

# The files of a Hub repo some format reads or carries, beyond the safetensors weights and the model files
# every checkpoint has (checkpoint.MODEL_FILE_PATTERNS): each format's detection names its own.
HUB_FILE_PATTERNS = tuple(dict.fromkeys(p for d in Detection.registry for p in (*d.config_files, *d.hub_files)))
