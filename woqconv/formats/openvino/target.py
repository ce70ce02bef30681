"""Target ``openvino``: an OpenVINO IR model whose quantized linears hold the source's integer codes.

The IR is written by export.py: optimum-intel's export of the dense architecture, with each quantized
linear's weight replaced by a decompression sub-graph (graph.py). Contiguous groups only: OpenVINO's
decompression groups are blocks of ``group`` input channels, so a block-uniform ``g_idx`` is relabelled
(exactly) and a scattered act-order one is refused. Permuting the input channels of the weight would
need a Gather on the activations in front of every such MatMul, a graph rewrite the CPU plugin does not
fuse; ``--requantize`` refits contiguous groups instead.
"""

from __future__ import annotations

from ...ir import QuantLinear
from ..base import LayerFamily
from ...engines import loads
from ..targets import LoadExample, Prepared, Target

class OpenvinoLayout(LayerFamily):
    """The layer checks of the openvino target; it writes no safetensors tensors (the IR is built by
    graph.py's :func:`substitute_weights`), so it is not registered as a readable family."""

    suffixes = ()

    @classmethod
    def check_writable(cls, layer: QuantLinear) -> str | None:
        if layer.in_features % layer.group_size:
            return (f"in_features {layer.in_features} is not a multiple of group size {layer.group_size}: OpenVINO's "
                    "decompression reshapes whole groups")
        if layer.bits not in (2, 3, 4, 8):
            return f"{layer.bits}-bit codes have no OpenVINO constant type here (u4 holds 2-4 bits, u8 holds 8)"
        return None

    @classmethod
    def specs(cls, layer):
        return []


class OpenvinoTarget(Target):
    name = "openvino"
    engines = staticmethod(lambda facts: {"openvino": loads("OVModelForCausalLM.from_pretrained")})
    family = OpenvinoLayout
    zero_point_convention = "v2"  # true zero points, as the IR holds them
    keeps_g_idx = False
    container = "openvino"
    per_layer_precision = True  # every layer gets its own u4 or u8 constants
    description = "OpenVINO IR (optimum-intel OVModelForCausalLM): u4/u8 codes, zero points and scales in the CPU plugin's decompression sub-graph"
    loader = "openvino"
    load_examples = (LoadExample(
        "With optimum-intel (the OpenVINO runtime):",
        'from optimum.intel import OVModelForCausalLM{tokenizer_import_line}\n\n'
        'model = OVModelForCausalLM.from_pretrained("{repo}"){tokenizer}'),)

    def prepare(self, layer) -> Prepared:
        prepared = super().prepare(layer)
        if prepared.refusal or not isinstance(prepared.layer, QuantLinear):
            return prepared
        if prepared.layer.bits < 4:
            prepared.changes.append(f"{prepared.layer.bits}-bit codes stored in u4 constants (same integers)")
        return prepared

    def write_whole(self, plan, into, layer_to_write, progress) -> int:
        from .export import write_openvino  # an OpenVINO IR, built from optimum-intel's export

        return write_openvino(plan, into, layer_to_write, progress)

    def quantization_config(self, summary) -> None:
        return None  # config.json describes the dense architecture; the IR carries the quantization

    def config_files(self, qc, summary):
        return {}
