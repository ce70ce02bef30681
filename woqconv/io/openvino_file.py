"""An OpenVINO IR model (``openvino_model.xml`` + ``.bin``) with compressed weights, seen as named tensors,
with the same interface as :class:`woqconv.io.safetensors_io.SafetensorsFile`.

NNCF's ``compress_weights`` (alone, or inside optimum-intel's export) leaves each compressed weight as a small
decompression sub-graph in front of its consumer::

    Constant u4 | i4 | u8 | i8, [out, in] or [out, G, group]    (the codes)
      -> Convert(f16|f32)
      -> Subtract(Convert(Constant zero point, same integer type))      (absent for symmetric modes)
      -> Multiply(Constant scale [out, G, 1] | [out, 1])
      -> Reshape [out, in]                                              (grouped only)
      -> Convert(f32)                                                   (optional)
      -> MatMul(transpose_b=True)  or  Gather (an embedding)

Compressed weights are found by that structure, not by name: every integer constant is followed to its consumer,
and a zero point is told from codes by where it enters (the subtrahend of the Subtract). Names differ between
producers (optimum-intel 2.2 calls the codes ``self.<module>._openvino_orig_weight``, NNCF on a converted model
``self.<module>.weight``), so a weight is named by its consumer's module path (``__module.<module>/...``, which
OpenVINO's PyTorch frontend gives every op of a module), and by its constant's name only where the consumer has
none. This file names what it finds by that Hugging Face module:

* a compressed linear ``P`` becomes ``P.codes`` (U8 ``[out, in]``, the unsigned level q), ``P.zero_point``
  (U8 ``[out, G]``, the true z) and ``P.scale`` (``[out, G]``, the stored float dtype). Signed i4/i8 codes
  without a zero point are symmetric: ``q_signed * s == (q_signed + 2^(b-1) - 2^(b-1)) * s``, so they are
  stored as unsigned ``q = q_signed + 2^(b-1)`` with ``P.zero_point`` absent, which the reader turns into
  ``z = 2^(b-1)`` exactly.
* a compressed embedding (feeds a Gather) and a compressed ``lm_head`` become dense F32 ``P.weight``, the
  values OpenVINO's CPU plugin computes: ``(q - z) * s`` in fp32 (measured bit-exact, README). Hugging Face
  GPTQ/AWQ/INC loaders keep both unquantized, so their codes cannot be carried over. A tied embedding (one
  decompression feeding the Gather and the output head's MatMul) is one tensor, the embedding's.
* dense float constants keep their torch names where OpenVINO kept them (``self.<module>.<param>``, or
  ``self.<module>._openvino_orig_<param>`` from optimum-intel's patched modules). RMSNorm weights lose theirs
  (``Constant_123``): one ``[1, 1, H]`` constant multiplied in ``__module.<module>/aten::mul`` is named
  ``<module>.weight``; so do the biases of a dense export's linears, a ``[1, 1, out]`` constant added in
  ``__module.<module>/aten::linear/Add``, named ``<module>.bias``. A norm weight of exactly 1.0 everywhere is folded away by the converter; it is absent
  here, and a Hugging Face loader initialises it to 1.0 again.

Opening parses the graph (openvino is imported only then: woqconv works without it) and keeps the
constants' numpy views; nothing is unpacked until a tensor is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import safetensors_io
from .._lazy import torch
from ..errors import FormatError
from .safetensors_io import TensorInfo, open_regular

XML_NAME = "openvino_model.xml"
BIN_NAME = "openvino_model.bin"
# optimum-intel's record of how it compressed the weights (OVConfig.save_pretrained); nothing reads it on load.
CONFIG_NAME = "openvino_config.json"
_INTEGER_TYPES = {"u4": (4, False), "i4": (4, True), "u8": (8, False), "i8": (8, True)}
_FLOAT_TYPES = {"f16": "float16", "f32": "float32", "bf16": "bfloat16"}  # OpenVINO type -> torch dtype name
# Ops a decompression sub-graph is made of; anything else between the codes and their consumer is a
# pattern this reader does not know.
_CHAIN_OPS = ("Convert", "Subtract", "Multiply", "Reshape")
_CONSUMER_OPS = ("MatMul", "Gather")
# OpenVINO's PyTorch frontend names every op of a module "__module.<module path>/<aten op>/<op>".
_MODULE_OP = re.compile(r"^__module\.(?P<module>[\w.]+)/")
_NORM_MUL = re.compile(r"^__module\.(?P<module>[\w.]+)/aten::mul/")
_LINEAR_ADD = re.compile(r"^__module\.(?P<module>[\w.]+)/(?:aten|ov_ext)::linear/Add")
# Weights the converter leaves unnamed ([1, 1, N] constants), named by the op that consumes them:
# an RMSNorm's multiply by its weight, and a linear's add of its bias (a dense export's linears).
_UNNAMED = {"Multiply": ("weight", _NORM_MUL), "Add": ("bias", _LINEAR_ADD)}
# optimum-intel's patched modules (ov_ext::linear, ov_ext::embedding) keep their parameters as
# "<module>._openvino_orig_<param>".
ORIGINAL_PARAM = "._openvino_orig_"


@dataclass
class Compressed:
    """One compressed weight: where its pieces are and what it feeds."""

    name: str  # Hugging Face weight name (<module>.weight)
    bits: int
    signed: bool
    out_features: int
    in_features: int
    groups: int
    codes: object  # openvino Constant nodes
    zero_point: object | None
    scale: object
    consumer: str  # "MatMul" or "Gather"


def _ov_type(node) -> str:
    return node.get_output_element_type(0).get_type_name()


def _raw(const) -> np.ndarray:
    """A constant's bytes as stored: u4/i4 come packed two per byte."""
    return np.ascontiguousarray(const.data).reshape(-1).view(np.uint8)


def _integers(const, bits: int, signed: bool, count: int) -> torch.Tensor:
    """A u4/i4/u8/i8 constant's values as unsigned levels, uint8 [count] (signed: +2^(b-1))."""
    raw = torch.from_numpy(_raw(const).copy())
    if bits == 4:
        # Element 2k is the low nibble of byte k, 2k+1 the high one (checked against OpenVINO's own
        # decompression of the fixture: every weight equal).
        raw = torch.stack([raw & 0xF, raw >> 4], dim=-1).reshape(-1)
    values = raw[:count]
    if signed:
        values = values ^ (1 << (bits - 1))  # two's complement + 2^(b-1), within b bits
    return values


class OpenVinoFile:
    """An OpenVINO IR model's weights by Hugging Face name: compressed linears as codes/zero_point/scale."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.bin_path = self.path.with_suffix(".bin")
        for p in (self.path, self.bin_path):
            os.close(open_regular(p))  # a FIFO or a directory under the name is refused by name
        self.size = self.path.stat().st_size + self.bin_path.stat().st_size
        self.metadata: dict[str, str] = {}  # an output shard's header metadata: none, so the writer's {"format": "pt"}
        self.compressed: dict[str, Compressed] = {}
        self.densified: dict[str, Compressed] = {}  # compressed embeddings / lm_head, read as dense weights
        self.float_linears: dict[str, tuple[int, ...]] = {}  # MatMul weights left uncompressed, by name
        self.tied_head = False  # the embedding's decompression also feeds the output head's MatMul
        self._readers: dict[str, Callable[[], torch.Tensor]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            import openvino as ov
        except ImportError:
            raise FormatError("reading OpenVINO IR needs the openvino package (pip install openvino)", file=self.path) from None
        try:
            model = ov.Core().read_model(str(self.path), str(self.bin_path))
        except Exception as e:  # openvino raises RuntimeError with a multi-line trace for a bad IR
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise FormatError(f"OpenVINO cannot read this IR: {first[:200]}", file=self.path) from None
        self._model = model
        self._scan(model)

    # -- graph ------------------------------------------------------------------------------------
    def _scan(self, model) -> None:
        constants = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
        self._parts: set[str] = set()  # zero point and scale constants of a compressed weight
        zero_points: list = []  # integer constants that entered a Subtract as the subtrahend
        for op in constants:
            if _ov_type(op) in _INTEGER_TYPES:
                trace = self._decompression(op)
                if trace is None:
                    zero_points.append(op)
                else:
                    self._add_compressed(op, *_INTEGER_TYPES[_ov_type(op)], *trace)
        for op in zero_points:
            if op.get_friendly_name() not in self._parts:
                raise FormatError(f"integer constant {op.get_friendly_name()!r} is subtracted from a weight but belongs to "
                                  "no decompression chain this reader knows", file=self.path)
        for op in constants:
            if _ov_type(op) in _FLOAT_TYPES and op.get_friendly_name() not in self._parts:
                self._add_dense(op)

    def _add(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], read: Callable[[], torch.Tensor], stored=None) -> None:
        """Register a tensor. Its ``nbytes`` are the bytes the .bin holds for it (``stored``, a Constant),
        so sizes and bits per weight report the file, not the unpacked view."""
        if name in self.tensors:
            raise FormatError(f"two constants are named {name}", file=self.path, tensor=name)
        nbytes = stored.get_byte_size() if stored is not None else int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        self.tensors[name] = TensorInfo(name, safetensors_io.DTYPE_NAMES[dtype], tuple(shape), 0, nbytes)
        self._readers[name] = read

    def _add_dense(self, const) -> None:
        """A float weight: named by torch (``self.<module>.<param>``), or a norm weight found by its consumer."""
        name = const.get_friendly_name()
        shape = tuple(const.get_output_shape(0))
        consumers = [t.get_node() for t in const.output(0).get_target_inputs()]
        if len(consumers) == 1 and consumers[0].get_type_name() == "Convert":
            # saved with compress_to_fp16: an f16 constant, widened to f32 before its use
            consumers = [t.get_node() for t in consumers[0].output(0).get_target_inputs()]
        if name.startswith("self.") and len(shape) >= 1:
            hf = name[len("self."):].replace(ORIGINAL_PARAM, ".")
        elif len(shape) == 3 and shape[:2] == (1, 1) and len(consumers) == 1 and consumers[0].get_type_name() in _UNNAMED:
            param, pattern = _UNNAMED[consumers[0].get_type_name()]
            m = pattern.match(consumers[0].get_friendly_name())
            if not m or (param == "weight" and not m.group("module").endswith("norm")):
                return
            hf, shape = f"{m.group('module')}.{param}", shape[2:]
        else:
            return  # attention masks, rotary tables, eps: the graph's own constants, not weights
        dtype = getattr(torch, _FLOAT_TYPES[_ov_type(const)])
        self._add(hf, dtype, shape, lambda c=const, s=shape, d=dtype: _float_tensor(c, d).reshape(s), const)
        if len(shape) == 2 and any(n.get_type_name() == "MatMul" for n in consumers):
            self.float_linears[hf] = shape

    def _add_compressed(self, const, bits: int, signed: bool, zp, scale, consumers: list) -> None:
        name = const.get_friendly_name()
        prefix, consumer = self._module_of(const, consumers)
        shape = tuple(const.get_output_shape(0))
        if len(shape) not in (2, 3) or 0 in shape:
            raise FormatError(f"compressed weight has shape {list(shape)}, expected [out, in] or [out, groups, group_size]", file=self.path, tensor=name)
        out, inf = shape[0], int(np.prod(shape[1:], dtype=np.int64))
        groups = shape[1] if len(shape) == 3 else 1
        for what, node in (("scale", scale), ("zero point", zp)):
            if node is not None and int(np.prod(node.get_output_shape(0), dtype=np.int64)) not in (1, out * groups):
                raise FormatError(f"{what} has shape {list(node.get_output_shape(0))}, expected {out * groups} values for weight {list(shape)}", file=self.path, tensor=name)
        if zp is not None and _ov_type(zp) not in _INTEGER_TYPES:
            raise FormatError(f"zero point is {_ov_type(zp)}, expected an integer constant like the codes", file=self.path, tensor=zp.get_friendly_name())
        if _ov_type(scale) not in _FLOAT_TYPES:
            raise FormatError(f"scale is {_ov_type(scale)}, expected a float constant", file=self.path, tensor=scale.get_friendly_name())
        self._parts |= {n.get_friendly_name() for n in (zp, scale) if n is not None}
        c = Compressed(f"{prefix}.weight", bits, signed, out, inf, groups, const, zp, scale, consumer)
        if prefix in self.compressed or prefix in self.densified:
            raise FormatError(f"two compressed weights belong to module {prefix}", file=self.path, tensor=name)
        if consumer == "Gather" or prefix.split(".")[-1] == "lm_head":
            self.densified[prefix] = c
            self._add(c.name, torch.float32, (out, inf), lambda c=c: self._dequantized(c))
            return
        self.compressed[prefix] = c
        self._add(f"{prefix}.codes", torch.uint8, (out, inf), lambda c=c: self.codes(c), const)
        if zp is not None:
            self._add(f"{prefix}.zero_point", torch.uint8, (out, groups), lambda c=c: self.zeros(c), zp)
        self._add(f"{prefix}.scale", getattr(torch, _FLOAT_TYPES[_ov_type(scale)]), (out, groups), lambda c=c: self.scales(c), scale)

    def _module_of(self, const, consumers: list) -> tuple[str, str]:
        """The Hugging Face module a compressed weight belongs to, and its consumer type ("MatMul" or "Gather").

        The consumer's module path names it (a tied embedding: the Gather's); the constant's own name is the
        fallback for graphs whose ops carry no module path."""
        gathers = [n for n in consumers if n.get_type_name() == "Gather"]
        if len(consumers) > 1 and len(gathers) != 1:
            raise FormatError(f"compressed weight {const.get_friendly_name()!r} feeds {len(consumers)} ops "
                              f"({', '.join(n.get_friendly_name() for n in consumers[:3])}); only a tied embedding "
                              "(one Gather and the output head) may share one", file=self.path)
        node = gathers[0] if gathers else consumers[0]
        self.tied_head |= len(consumers) > 1
        m = _MODULE_OP.match(node.get_friendly_name())
        if m:
            return m.group("module"), node.get_type_name()
        name = const.get_friendly_name()
        name = name[len("self."):] if name.startswith("self.") else name
        for suffix in (".weight", f"{ORIGINAL_PARAM}weight"):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)], node.get_type_name()
        raise FormatError(f"cannot tell which module compressed weight {const.get_friendly_name()!r} belongs to: neither its "
                          f"consumer {node.get_friendly_name()!r} nor the constant is named after one", file=self.path)

    def _decompression(self, const):
        """Follow an integer constant to its consumers: (zero point constant or None, scale constant, consumer
        nodes), or None when the constant is a zero point (it enters a Subtract as the subtrahend)."""
        name = const.get_friendly_name()
        node, zp, scale = const, None, None
        while True:
            targets = list(node.output(0).get_target_inputs())
            kinds = [t.get_node().get_type_name() for t in targets]
            if targets and all(k in _CONSUMER_OPS for k in kinds):
                break
            if len(targets) != 1:
                raise FormatError(f"{node.get_type_name()} {node.get_friendly_name()!r} feeds {len(targets)} ops "
                                  f"({', '.join(sorted(set(kinds)))}); expected one decompression chain", file=self.path, tensor=name)
            nxt, port = targets[0].get_node(), targets[0].get_index()
            kind = nxt.get_type_name()
            if kind not in _CHAIN_OPS:
                raise FormatError(f"compressed weight reaches {kind} {nxt.get_friendly_name()!r}, no step of a decompression; "
                                  f"known decompression: {' -> '.join(_CHAIN_OPS)} -> MatMul or Gather", file=self.path, tensor=name)
            if kind == "Subtract":
                if port == 1:
                    return None  # a zero point: its codes' chain collects it
                zp = self._source_constant(nxt.input_value(1).get_node(), name)
            elif kind == "Multiply":
                scale = self._source_constant(nxt.input_value(1 - port).get_node(), name)
            node = nxt
        for t in targets:
            consumer, port = t.get_node(), t.get_index()
            if consumer.get_type_name() == "MatMul":
                attrs = consumer.get_attributes()
                if port != 1 or attrs.get("transpose_a") or not attrs.get("transpose_b"):
                    raise FormatError(f"MatMul {consumer.get_friendly_name()!r} does not take the weight as [out, in] "
                                      f"(input {port}, transpose_b {attrs.get('transpose_b')})", file=self.path, tensor=name)
            elif port != 0:
                raise FormatError(f"Gather {consumer.get_friendly_name()!r} takes the weight as input {port}, not the table", file=self.path, tensor=name)
        if scale is None:
            raise FormatError("decompression has no Multiply by a scale", file=self.path, tensor=name)
        return zp, scale, [t.get_node() for t in targets]

    def _source_constant(self, node, name: str):
        """The Constant behind a zero point or scale input (through a Convert, as NNCF writes zero points)."""
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Constant":
            raise FormatError(f"decompression input {node.get_friendly_name()!r} is a {node.get_type_name()}, not a constant", file=self.path, tensor=name)
        return node

    # -- values -----------------------------------------------------------------------------------
    def codes(self, c: Compressed) -> torch.Tensor:
        return _integers(c.codes, c.bits, c.signed, c.out_features * c.in_features).reshape(c.out_features, c.in_features)

    def zeros(self, c: Compressed) -> torch.Tensor:
        if c.zero_point is None:
            return torch.full((c.out_features, c.groups), 1 << (c.bits - 1), dtype=torch.uint8)
        zb, zs = _INTEGER_TYPES[_ov_type(c.zero_point)]
        n = int(np.prod(c.zero_point.get_output_shape(0), dtype=np.int64))
        z = _integers(c.zero_point, zb, zs, n)
        if zs != c.signed or zb != c.bits:
            raise FormatError(f"zero point is {_ov_type(c.zero_point)} but the codes are {_ov_type(c.codes)}", file=self.path, tensor=c.name)
        return z.expand(c.out_features * c.groups).reshape(c.out_features, c.groups).contiguous()

    def scales(self, c: Compressed) -> torch.Tensor:
        s = _float_tensor(c.scale, getattr(torch, _FLOAT_TYPES[_ov_type(c.scale)])).reshape(-1)
        return s.expand(c.out_features * c.groups).reshape(c.out_features, c.groups).contiguous()

    def _dequantized(self, c: Compressed) -> torch.Tensor:
        """``(q - z) * s`` in fp32, per group: what OpenVINO's CPU plugin computes for this weight."""
        gs = c.in_features // c.groups
        q = self.codes(c).to(torch.float32).view(c.out_features, c.groups, gs)
        z = self.zeros(c).to(torch.float32)[:, :, None]
        s = self.scales(c).to(torch.float32)[:, :, None]
        return ((q - z) * s).reshape(c.out_features, c.in_features)

    # -- the SafetensorsFile interface ------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str) -> torch.Tensor:
        return self._readers[name]().contiguous()

    def copy_into(self, name: str, dst_fd: int, dst_offset: int) -> None:
        data = memoryview(self.read(name).view(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(data):
            done += os.pwrite(dst_fd, data[done:], dst_offset + done)

    def close(self) -> None:
        self._readers = {}
        self._model = None
        self.compressed = {}

    def __enter__(self) -> "OpenVinoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _float_tensor(const, dtype: torch.dtype) -> torch.Tensor:
    raw = torch.from_numpy(_raw(const).copy())
    return raw.view(dtype)
