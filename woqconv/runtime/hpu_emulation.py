"""Run Intel Neural Compressor's own Gaudi (HPU) weight-only code path on a CPU-only machine.

Without ``habana_frameworks`` there is no ``hpu`` device: ``tensor.to("hpu")`` raises
``ModuleNotFoundError: No module named 'torch.hpu'`` and ``torch.ops.hpu.convert_from_uint4`` does not exist.
``emulated_hpu()`` supplies exactly what INC 3.x (neural-compressor-pt 3.10) needs for
``load(..., device="hpu")`` and ``HPUWeightOnlyLinear.forward`` (FORMATS.md 3.5), and nothing more:

* ``Tensor.to`` sends ``hpu`` to the CPU (``HPUWeightOnlyLinear.__init__/pack``,
  ``UnpackedWeightOnlyLinearParams.to``, and the final ``qmodel.to(device)`` in ``quantization.load``;
  ``Module.to`` goes through ``Tensor.to`` as well);
* ``safetensors.torch.load_file`` sends ``device="hpu"`` to the CPU (``WOQModelLoader.load_inc_format_woq_model``
  reads the sharded default-format cache ``quantized_hpu_weight.safetensors`` that way);
* INC's ``is_hpex_available()`` answers True (``environ._hpex_available``);
* INC's ``is_hpex_support_g_idx()`` answers ``support_g_idx`` (it would import ``habana_frameworks.torch``);
* the op ``hpu::convert_from_uint4`` gets a CPU kernel (registered once per process, never removed).

Everything patched is restored on exit. With a real Gaudi present the context manager does nothing.
INC's accelerator stays "cpu": ``HPU_Accelerator`` registers itself only if available at import time, and the
WOQ load/forward path never asks it for anything but a (CPU no-op) ``synchronize``.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Iterator

import safetensors.torch
import torch

EMULATED_LABEL = "hpu (emulated on CPU)"
REAL_LABEL = "hpu"

# The schema of the SynapseAI op (habana_frameworks' ``hpu::convert_from_uint4``) plus the optional
# ``group_index`` that newer releases accept; INC calls it positionally with 4 or 5 arguments.
OP_NAMESPACE = "hpu"
OP_NAME = "convert_from_uint4"
OP_SCHEMA = (
    "convert_from_uint4(Tensor input, Tensor scale, Tensor? zero_point, ScalarType out_dtype, "
    "Tensor? group_index=None) -> Tensor"
)

_BITS = 4
_FIELDS = 32 // _BITS
_library: torch.library.Library | None = None  # kept alive: dropping it would unregister the op


def hpu_is_real() -> bool:
    """True when ``habana_frameworks`` imports, i.e. there is a real HPU stack and nothing to emulate."""
    try:
        importlib.import_module("habana_frameworks")
    except ImportError:
        return False
    return True


def hpu_label() -> str:
    """What to call the device in a report: ``"hpu"`` or ``EMULATED_LABEL``."""
    return REAL_LABEL if hpu_is_real() else EMULATED_LABEL


def unpack_sequential_uint4(packed: torch.Tensor) -> torch.Tensor:
    """``int32 [rows, cols/8]`` -> ``int32 [rows, cols]``: 8 sequential 4-bit fields per word, LSB first."""
    shifts = torch.arange(0, 32, _BITS, dtype=torch.int32, device=packed.device)
    fields = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & (2**_BITS - 1)
    return fields.reshape(packed.shape[0], packed.shape[1] * _FIELDS)


def convert_from_uint4(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    out_dtype: torch.dtype,
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPU version of ``hpu::convert_from_uint4`` as ``HPUWeightOnlyLinear.forward`` uses it (FORMATS.md 3.5).

    ``input`` int32 ``[in, out/8]`` and ``zero_point`` int32 ``[G, out/8]`` (raw zero points) hold 8 sequential
    LSB-first 4-bit fields along ``out``; ``scale`` is ``[G, out]``. Returns ``W_T [in, out] =
    (q[i, o] - z[g(i), o]) * s[g(i), o]`` computed in fp32 and cast to ``out_dtype``, where
    ``g(i) = i // (in / G)`` or ``group_index[i]`` when given.
    """
    if zero_point is None:
        raise ValueError("convert_from_uint4 emulation needs zero points (HPUWeightOnlyLinear always has them)")
    q = unpack_sequential_uint4(input)
    z = unpack_sequential_uint4(zero_point)
    n_in, n_groups = q.shape[0], scale.shape[0]
    if q.shape[1] != scale.shape[1] or z.shape != scale.shape:
        raise ValueError(f"shape mismatch: qweight {tuple(input.shape)}, zeros {tuple(zero_point.shape)}, "
                         f"scales {tuple(scale.shape)}")
    if group_index is None:
        if n_in % n_groups:
            raise ValueError(f"in_features {n_in} is not a multiple of the {n_groups} groups; pass group_index")
        group_index = torch.arange(n_in, device=q.device) // (n_in // n_groups)
    g = group_index.to(torch.long)
    weight = (q - z[g]).to(torch.float32) * scale[g].to(torch.float32)
    return weight.to(out_dtype)


def register_convert_from_uint4() -> None:
    """Register the CPU kernel of ``hpu::convert_from_uint4`` once per process (no-op if the op exists)."""
    global _library
    if _library is not None or hasattr(torch.ops.hpu, OP_NAME):
        return
    library = torch.library.Library(OP_NAMESPACE, "FRAGMENT")
    library.define(OP_SCHEMA)
    library.impl(OP_NAME, convert_from_uint4, "CPU")
    _library = library


def _on_cpu(device):
    """Map an ``hpu`` device (``"hpu"``, ``"hpu:0"``, ``torch.device("hpu")``) to the CPU; leave others alone."""
    if isinstance(device, (str, torch.device)) and torch.device(device).type == "hpu":
        return "cpu" if isinstance(device, str) else torch.device("cpu")
    return device


_tensor_to = torch._C.TensorBase.to


def _tensor_to_emulated(self, *args, **kwargs):
    """``Tensor.to`` with ``hpu`` read as CPU: INC moves buffers with ``.to("hpu")`` (``HPUWeightOnlyLinear``)."""
    args = tuple(_on_cpu(a) for a in args)
    if "device" in kwargs:
        kwargs["device"] = _on_cpu(kwargs["device"])
    return _tensor_to(self, *args, **kwargs)


_safetensors_load_file = safetensors.torch.load_file


def _load_file_emulated(filename, device="cpu", **kwargs):
    """``safetensors.torch.load_file`` with ``hpu`` read as CPU, for INC's sharded default-format cache."""
    return _safetensors_load_file(filename, device=_on_cpu(device), **kwargs)


_MISSING = object()


@contextmanager
def _patched(patches: list[tuple[object, str, object]]) -> Iterator[None]:
    """Set ``owner.name = value`` for each patch; restore the previous values (or absence) on exit."""
    saved = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, old in reversed(saved):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


def _inc_patches(support_g_idx: bool) -> list[tuple[object, str, object]]:
    """The INC checks on the ``device="hpu"`` path; empty if INC is not installed."""
    try:
        from neural_compressor.torch.algorithms.weight_only import modules
        from neural_compressor.torch.utils import environ
    except ImportError:
        return []
    return [
        # environ.is_hpex_available() reads this global. INC 3.10's device="hpu" WOQ path only reaches it through
        # is_hpex_support_g_idx (replaced below); patched so that any caller gating on it sees an HPU.
        (environ, "_hpex_available", True),
        # HPUWeightOnlyLinear.__init__ calls it to choose the 4- or 5-argument convert_from_uint4 call;
        # the real one imports habana_frameworks.torch and inspects hpu::convert_from_int4 (and is lru_cached).
        (modules, "is_hpex_support_g_idx", lambda: support_g_idx),
    ]


@contextmanager
def emulated_hpu(*, support_g_idx: bool = True) -> Iterator[str]:
    """Let INC's HPU code run on the CPU inside the block; yields the device label to report.

    ``support_g_idx`` is what INC's ``is_hpex_support_g_idx()`` answers: True makes INC pass ``g_idx`` to the op
    (SynapseAI releases whose op takes ``group_index``), False makes it use the 4-argument call of the "released
    docker 1.22.0", which silently ignores an act-order g_idx.
    On a machine with ``habana_frameworks`` nothing is patched and the label is ``"hpu"``.
    """
    if hpu_is_real():
        yield REAL_LABEL
        return
    register_convert_from_uint4()
    patches = [
        (torch.Tensor, "to", _tensor_to_emulated),
        (safetensors.torch, "load_file", _load_file_emulated),
        *_inc_patches(support_g_idx),
    ]
    with _patched(patches):
        yield EMULATED_LABEL
