"""The OpenVINO graph of a quantized linear: the integer codes, zero points and scales as constants.

In optimum-intel's export of the dense architecture (export.py), this module replaces each quantized linear's dense weight constant there with the weight-decompression
sub-graph OpenVINO's CPU plugin fuses into its FullyConnected kernel (the shape NNCF's
``compress_weights`` builds, nncf/quantization/algorithms/weight_compression/openvino_backend.py)::

    Constant codes u4|u8 [out, G, group] -> Convert(f32)
    Constant zero points u4|u8 [out, G, 1] -> Convert(f32)      Subtract
    Constant scales f16|bf16|f32 [out, G, 1] -> Convert(f32)    Multiply -> Reshape [out, in] -> MatMul(transpose_b)

What the IR calls codes, true zero points and scales are stored as they are: u4 holds 2-, 3- and
4-bit codes (their integers unchanged), u8 holds 8-bit codes; zero points are the true ``z``
(symmetric layers get the constant ``z = 2**(bits-1)``, the same integers, not signed i4 codes).
NNCF decompresses in f16; this sub-graph decompresses in f32 instead, because ``(q - z) * s`` in f32
is exactly woqconv's ``QuantLinear.dequantize()`` (an integer of at most 9 bits times a 16-bit float
needs at most 20 significant bits), where the f16 product rounds. Scales stay in their source dtype.

"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..._lazy import torch
from ...ir import QuantLinear

# Where optimum-intel's export names a linear's weight constant: the module path with one of these
# suffixes (``ov_ext::linear`` patched linears keep the original weight under the second name).
WEIGHT_SUFFIXES = (".weight", "._openvino_orig_weight")


def element_type_name(bits: int) -> str:
    """The OpenVINO element type the codes and zero points of a ``bits``-bit layer are stored in."""
    return "u8" if bits > 4 else "u4"


def _ov():
    import openvino as ov
    import openvino.opset13 as ops

    return ov, ops


def decompressed_weight(layer: QuantLinear, name: str):
    """The decompression sub-graph of one layer (contiguous groups, codes loaded): an f32 ``[out, in]`` output."""
    ov, ops = _ov()
    if layer.g_idx is not None:
        raise ValueError(f"{layer.name}: g_idx must be made contiguous before writing OpenVINO groups")
    out, inp, g = layer.out_features, layer.in_features, layer.num_groups
    group = inp // g
    etype = getattr(ov.Type, element_type_name(layer.bits))
    codes = layer.codes.numpy().reshape(out, g, group)
    zeros = layer.zeros.numpy().reshape(out, g, 1)
    scales = _scale_constant(layer.scales.reshape(out, g, 1), f"{name}/scale")
    # Every node is named: OpenVINO names the others from a process-wide counter, so the same conversion
    # would write different bytes depending on what the process built before.
    q = ops.convert(ops.constant(codes, dtype=etype, name=name), ov.Type.f32, name=f"{name}/convert")
    z = ops.convert(ops.constant(zeros, dtype=etype, name=f"{name}/zero_point"), ov.Type.f32, name=f"{name}/zero_point/convert")
    w = ops.multiply(ops.subtract(q, z, name=f"{name}/zero_point/subtract"), scales, name=f"{name}/fq_weights")
    shape = ops.constant(np.array([out, inp], dtype=np.int64), name=f"{name}/reshape/shape")
    return ops.reshape(w, shape, special_zero=False, name=f"{name}/reshape")


def _scale_constant(scales: torch.Tensor, name: str):
    """Scales in their own dtype (f16, bf16 or f32), converted to f32 in the graph."""
    ov, ops = _ov()
    if scales.dtype == torch.float32:
        return ops.constant(scales.numpy(), dtype=ov.Type.f32, name=name)
    if scales.dtype == torch.float16:
        const = ops.constant(scales.numpy(), dtype=ov.Type.f16, name=name)
    elif scales.dtype == torch.bfloat16:
        # numpy has no bf16: hand OpenVINO the raw 16-bit patterns in a bf16 tensor.
        tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(scales.shape)))
        tensor.data.view(np.uint16)[...] = scales.contiguous().view(torch.int16).numpy().view(np.uint16)
        const = ops.constant(tensor, name=name)
    else:
        raise ValueError(f"scales of dtype {scales.dtype} are not written to OpenVINO")
    return ops.convert(const, ov.Type.f32, name=f"{name}/convert")


def weight_constants(model) -> dict[str, object]:
    """Module path -> the dense weight Constant optimum-intel's export made for it."""
    found = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_friendly_name()
        for suffix in WEIGHT_SUFFIXES:
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                found[module[len("self."):] if module.startswith("self.") else module] = op
    return found


def _replace(node, new) -> None:
    """Route every consumer of ``node`` to ``new``; a Convert to ``new``'s type in between is skipped."""
    new_type = new.get_output_element_type(0)
    for target in list(node.output(0).get_target_inputs()):
        consumer = target.get_node()
        if consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) == new_type:
            _replace(consumer, new)
        elif new_type != node.get_output_element_type(0) and consumer.get_type_name() != "Convert":
            cast = _ov()[1].convert(new, node.get_output_element_type(0),
                                    name=f"{new.get_friendly_name()}/convert_for/{consumer.get_friendly_name()}")
            target.replace_source_output(cast.output(0))
        else:
            target.replace_source_output(new.output(0))


def substitute_weights(model, layers: Iterable[QuantLinear]) -> list[str]:
    """Replace each layer's dense weight in ``model`` (an ``openvino.Model``) by its decompression sub-graph.

    ``layers`` are prepared IR layers with codes; yields nothing and returns the names replaced. Raises
    ValueError naming the layer when the export has no matching [out, in] weight feeding a MatMul.
    """
    constants = weight_constants(model)
    done = []
    for layer in layers:
        module = layer.name
        const = constants.get(module)
        if const is None:
            raise ValueError(f"{module}: the exported graph has no weight constant for this layer")
        shape = tuple(const.get_output_partial_shape(0).to_shape())
        if shape != (layer.out_features, layer.in_features):
            raise ValueError(f"{module}: exported weight has shape {list(shape)}, the layer is {[layer.out_features, layer.in_features]}")
        _replace(const, decompressed_weight(layer, const.get_friendly_name()))
        done.append(module)
    model.validate_nodes_and_infer_types()
    return done
