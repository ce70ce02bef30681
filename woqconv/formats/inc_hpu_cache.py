"""INC's Gaudi cache of a "default" checkpoint, ``quantized_hpu_weight.pt``, written before INC runs.

INC's first ``load(CKPT, format="default", device="hpu", original_model=...)`` unpacks every
INCWeightOnlyLinear, repacks it into an HPUWeightOnlyLinear (``save_load.py:539-565``) and saves
``torch.save(model.state_dict(), CKPT/quantized_hpu_weight.pt)`` (``_save_hpu_format_tensor``,
``save_load.py:1044-1066``); a later ``device="hpu"`` load finds that file (``_use_hpu_module``,
``:1068-1091``), builds HPUWeightOnlyLinear directly and repacks nothing. This module writes the same
file, byte for byte, from the tensors alone: no INC, no dense weights (the architecture is built on
``meta``). Verified against neural-compressor-pt 3.10 under ``runtime.hpu_emulation`` (torch 2.13).

What decides the bytes, for a ``quantized_weight.pt`` whose every ``qconfig.json`` entry is ``awq``:

* Key order and ``state_dict._metadata`` are those of the original model's module tree after INC's
  swaps (``_replace_woqlinear_modules``, ``save_load.py:476-525``): each ``nn.Linear`` with
  ``<name>.qweight`` becomes an HPUWeightOnlyLinear (buffers in registration order ``bias`` if the
  Linear had one, ``qweight``, ``qzeros``, ``scales``, ``scale_bf16_to_fp8``, ``g_idx`` if kept;
  child module ``matmul_internal``; ``modules.py:693-739``); one with ``<name>.linear.qweight`` is
  first wrapped in MulLinear (buffer ``input_scale``, child ``linear``; ``modules.py:907-921``).
  Non-persistent buffers (rotary ``inv_freq``) have no key but their module has a ``_metadata`` entry.
* Every other tensor is the checkpoint's own, assigned by ``load_state_dict(assign=True)``
  (``save_load.py:272-277``, taken because the first entry's algorithm is ``awq``): its dtype, bytes
  and storage sharing are the file's, whatever dtype the original model was loaded in. A key the
  file lacks keeps the original model's tensor (its dtype, its values: a tied ``lm_head.weight``
  saved only as ``embed_tokens``), which no writer can know; :func:`cache_state_dict` refuses that.
  Labelled ``rtn``/``gptq``, every unquantized tensor would come from the original model instead.
* The HPU buffers pass through INC's optimum-format buffers first: scales and bias are fp16 there
  (``modules.py:244-268``) and become bf16 in ``HPUWeightOnlyLinear.pack`` (``modules.py:776-800``).
  The bias is kept only where the architecture's Linear has one (``save_load.py:501``,
  ``modules.py:693-696``): a checkpoint's bias on a bias-free Linear is dropped, an architecture
  bias absent from the checkpoint is saved as zeros. g_idx is kept only when the qconfig entry says
  ``desc_act`` and the g_idx is not "ordered" (``save_load.py:498,519-523``, ``modules.py:764-774``).
* ``torch.save`` names the zip's inner folder after the file's stem, so the file is written under
  its final name (in a scratch folder beside it, then moved).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

from .._lazy import torch
from ..architecture import meta_model
from ..errors import WoqconvError
from ..io import safetensors_io
from ..io.checkpoint import INC_WEIGHTS, Checkpoint
from ..io.safetensors_io import SafetensorsWriter, TensorSpec
from ..ir import PackedCodes, QuantLinear
from .base import ZP_V2, LayerFamily
from .detect import detect
from .inc import HPU_WEIGHT_NAME, HpuFamily, IncDefaultTarget, parse_qconfig
from .inc_container import close_maps, mapped_tensors
from .targets import neural_compressor_load

# HPUWeightOnlyLinear's state-dict keys, in the order its __init__ registers them.
HPU_BUFFERS = ("bias", "qweight", "qzeros", "scales", "scale_bf16_to_fp8", "g_idx")
MUL_LINEAR_CHILD = "linear"


# -- the tensors of one quantized layer ------------------------------------------------------------


def keeps_g_idx(g_idx: torch.Tensor | None, group_size: int, in_features: int, desc_act: bool) -> bool:
    """Whether INC's cache holds this layer's g_idx.

    ``group_size`` is the qconfig entry's (``-1``: one group); ``g_idx`` what ``quantized_weight.pt``
    stores for the layer (``None``: none, which INC reads as its zero-filled buffer). INC registers a
    g_idx only when the entry says ``desc_act`` and then drops it when every aligned block of
    ``group_size`` channels carries one label (``is_g_idx_ordered``); it raises on a length that is not
    a multiple of ``group_size``, and so does this.
    """
    if not desc_act:
        return False
    gs = in_features if group_size == -1 else group_size
    if in_features % gs:
        raise ValueError(f"INC cannot load this layer: g_idx length {in_features} is not a multiple of group_size {gs}")
    if g_idx is None:
        return False
    blocks = g_idx.reshape(-1, gs)
    return not bool((blocks == blocks[:, :1]).all())


def hpu_layer_tensors(layer: QuantLinear, *, bias: bool, desc_act: bool, group_size: int | None = None,
                      scale_bf16_to_fp8: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One layer's buffers as INC's HPUWeightOnlyLinear holds them after its first Gaudi load.

    Args:
        layer: the layer as INC reads it from ``quantized_weight.pt`` (raw zero points, the IR's),
            named as its keys are (``<module>.linear`` for a MulLinear-wrapped module).
        bias: whether the architecture's Linear has a bias (:func:`linear_has_bias`).
        desc_act: the layer's qconfig entry's ``desc_act``.
        group_size: the qconfig entry's group size (``-1`` allowed); the layer's by default.
        scale_bf16_to_fp8: the checkpoint's ``<prefix>.scale_bf16_to_fp8`` (bf16 ``[1]``), zeros if absent.

    Returns ``{"<prefix>.<buffer>": tensor}`` in INC's registration order.
    """
    problem = HpuFamily.check_writable(layer)
    if problem:
        raise ValueError(f"{layer.name}: {problem}")
    encoded = HpuFamily.encode(layer, ZP_V2)
    p = layer.name
    out: dict[str, torch.Tensor] = {}
    if bias:
        # INC's optimum-format bias buffer is fp16 and zero until a checkpoint bias is copied in.
        b = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        out[f"{p}.bias"] = b.to(torch.float16).to(torch.bfloat16)
    for name in ("qweight", "qzeros"):
        t = encoded[f"{p}.{name}"]
        out[f"{p}.{name}"] = t.words if isinstance(t, PackedCodes) else t
    # Scales are copied into an fp16 buffer before HPUWeightOnlyLinear.pack casts them to bf16; from
    # fp16 scales this equals encode()'s direct cast, from others it keeps INC's double rounding.
    out[f"{p}.scales"] = layer.scales.to(torch.float16).T.to(torch.bfloat16).contiguous()
    fp8 = scale_bf16_to_fp8 if scale_bf16_to_fp8 is not None else torch.zeros(1)
    out[f"{p}.scale_bf16_to_fp8"] = fp8.reshape(1).to(torch.bfloat16)
    gs = layer.group_size if group_size is None else group_size
    if keeps_g_idx(layer.g_idx, gs, layer.in_features, desc_act):
        out[f"{p}.g_idx"] = layer.g_idx.to(torch.int32)
    return {k: _own_storage(t) for k, t in out.items()}


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a contiguous storage of exactly its size: INC's buffers are fresh tensors, and
    torch.save writes a view's whole storage (packing may return views of a wider word buffer)."""
    if t.storage_offset() or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone(memory_format=torch.contiguous_format)
    return t


# -- the module tree INC saves ---------------------------------------------------------------------


def linear_has_bias(model: torch.nn.Module, module: str) -> bool:
    """Whether the architecture's Linear ``module`` has a bias (HPUWeightOnlyLinear keeps one only then)."""
    linear = model.get_submodule(module)
    if not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"{module} is a {type(linear).__name__}, not a Linear: INC quantizes only nn.Linear")
    return linear.bias is not None


@functools.cache
def _stand_ins() -> tuple[type, type]:
    """The two stand-in module classes, made on first use: a class statement naming ``torch.nn.Module``
    at import time would import torch with this module (woqconv imports torch lazily, ``_lazy.py``)."""

    class HpuLinearKeys(torch.nn.Module):
        """Stands where INC puts an HPUWeightOnlyLinear: the same buffers in the same order, the same
        ``matmul_internal`` child, hence the same keys and ``_metadata``; its meta tensors carry the
        shapes and dtypes of INC's buffers, to check the caller's against."""

        def __init__(self, in_features: int, out_features: int, groups: int, bias: bool, g_idx: bool):
            super().__init__()
            layout = {
                "bias": ((out_features,), torch.bfloat16) if bias else None,
                "qweight": ((in_features, out_features // 8), torch.int32),
                "qzeros": ((groups, out_features // 8), torch.int32),
                "scales": ((groups, out_features), torch.bfloat16),
                "scale_bf16_to_fp8": ((1,), torch.bfloat16),
                "g_idx": ((in_features,), torch.int32) if g_idx else None,
            }
            for name in HPU_BUFFERS:
                if layout[name] is not None:
                    shape, dtype = layout[name]
                    self.register_buffer(name, torch.empty(shape, dtype=dtype, device="meta"))
            self.matmul_internal = torch.nn.Module()

    class MulLinearKeys(torch.nn.Module):
        """Stands where INC puts a MulLinear: ``input_scale`` first, then the wrapped ``linear``."""

        def __init__(self, in_features: int, inner: torch.nn.Module):
            super().__init__()
            self.register_buffer("input_scale", torch.empty(in_features, device="meta"))
            self.add_module(MUL_LINEAR_CHILD, inner)

    return HpuLinearKeys, MulLinearKeys


def _quantized_modules(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Linear module -> the prefix of its HPU keys: itself, or ``<module>.linear`` where INC wraps it
    in MulLinear (its checkpoint keys are ``<module>.linear.qweight``, ``save_load.py:476-481``)."""
    found: dict[str, str] = {}
    for key in tensors:
        if not key.endswith(".qweight"):
            continue
        prefix = key[: -len(".qweight")]
        module = prefix
        if not isinstance(_submodule(model, prefix), torch.nn.Linear) and prefix.endswith(f".{MUL_LINEAR_CHILD}"):
            module = prefix[: -len(MUL_LINEAR_CHILD) - 1]
        linear = _submodule(model, module)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{key}: {module} is {'absent' if linear is None else 'a ' + type(linear).__name__}, "
                             "not a Linear of the architecture: INC quantizes only nn.Linear")
        found[module] = prefix
    return found


def _submodule(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def swap_in_hpu_modules(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Replace, in the meta ``model``, each Linear that ``tensors`` quantize by stand-ins with INC's keys.

    A Linear is quantized when ``<module>.qweight`` or ``<module>.linear.qweight`` (MulLinear) is
    among the names; the bias follows the architecture, g_idx the names (what
    :func:`hpu_layer_tensors` kept), the group count the ``scales``.
    """
    hpu_keys, mul_keys = _stand_ins()
    for module, prefix in _quantized_modules(model, tensors).items():
        linear = model.get_submodule(module)
        scales = tensors.get(f"{prefix}.scales")
        if scales is None or scales.dim() != 2:
            raise ValueError(f"{prefix}: needs 2-D scales [groups, out_features]")
        inner = hpu_keys(linear.in_features, linear.out_features, scales.shape[0],
                         bias=linear.bias is not None, g_idx=f"{prefix}.g_idx" in tensors)
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        # setattr on an existing child keeps its place in _modules, as INC's set_module does.
        setattr(parent, child, mul_keys(linear.in_features, inner) if prefix != module else inner)


def cache_state_dict(config: Mapping, tensors: Mapping[str, torch.Tensor]) -> OrderedDict:
    """The state dict INC's ``model.state_dict()`` returns after its first Gaudi load: the caller's
    tensors in INC's key order, with INC's ``_metadata``.

    ``tensors`` holds every key exactly once: each quantized layer's :func:`hpu_layer_tensors`, every
    other tensor of ``quantized_weight.pt`` as stored there (dtype included), MulLinear
    ``input_scale`` too. Tensors that share a storage in ``quantized_weight.pt`` (tied embeddings
    saved once) must share it here: INC's cache shares it, and ``torch.save`` writes it once.
    Raises ValueError on a missing or extra key, or a shape or dtype INC would not produce.
    """
    model = meta_model(config)
    swap_in_hpu_modules(model, tensors)
    layout = model.state_dict()
    missing = [k for k in layout if k not in tensors]
    extra = [k for k in tensors if k not in layout]
    if missing or extra:
        raise ValueError(f"tensors do not match INC's HPU model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
    hpu_keys, _ = _stand_ins()
    hpu = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, hpu_keys) for b in HPU_BUFFERS}
    state: OrderedDict = OrderedDict()
    for key, want in layout.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(want.shape) or (key in hpu and t.dtype != want.dtype):
            raise ValueError(f"{key}: {t.dtype} {list(t.shape)}, INC's HPU model holds {want.dtype} {list(want.shape)}")
        _check_own_storage(key, t)
        # detach: a plain tensor pickles as INC's state_dict() entries do (a Parameter would not).
        state[key] = t.detach()
    state._metadata = layout._metadata
    return state


def _check_own_storage(key: str, t: torch.Tensor) -> None:
    """torch.save writes a tensor's whole storage; a view into a larger one would write bytes INC's
    cache (copied from a file of exact storages) does not have."""
    storage = t.untyped_storage()
    if t.storage_offset() or storage.nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        raise ValueError(f"{key}: a view into a larger or strided storage; pass a tensor with a storage of its own")


# -- the file --------------------------------------------------------------------------------------


def save_cache(state: OrderedDict, path: str | os.PathLike) -> None:
    """``torch.save(state, path)`` as INC's ``_save_hpu_format_tensor`` does it, written atomically.

    ``state`` comes from :func:`cache_state_dict`; its tensors may be memory-mapped views (torch.save
    streams each storage from its pointer, so they need not be resident). The inner zip folder is the
    file's stem, so the file is written under ``path``'s own name in a scratch folder beside it."""
    path = Path(path)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = scratch / path.name
        torch.save(state, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


def write_cache(config: Mapping, tensors: Mapping[str, torch.Tensor], checkpoint_dir: str | os.PathLike) -> Path:
    """Write ``checkpoint_dir/quantized_hpu_weight.pt`` (see :func:`cache_state_dict`); returns its path."""
    path = Path(checkpoint_dir) / HPU_WEIGHT_NAME
    save_cache(cache_state_dict(config, tensors), path)
    return path


# -- the target that writes it ----------------------------------------------------------------------

class HpuDefaultTarget(IncDefaultTarget):
    """The Gaudi recipe's own route: INC's default format, loaded with
    ``load(OUT, format="default", device="hpu", original_model=...)``, plus the cache INC writes on that
    first load (``quantized_hpu_weight.pt``), so that INC repacks nothing."""

    name = "hpu-default"
    keeps_g_idx = False  # as hpu: older SynapseAI ignores any g_idx
    bf16_scales = True
    needs_config = True  # the cache's key order is the architecture's module tree
    default_hpu_cache = HPU_WEIGHT_NAME
    cache_family = HpuFamily
    needs = (("transformers", "inc"),)  # the cache's key order is the architecture's module tree
    loader = "inc-hpu-default"
    load_examples = (neural_compressor_load(
        'original_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))\n'
        'model = load(model_name_or_path=path, format="default", device="hpu", original_model=original_model)'
        '  # Gaudi: uses quantized_hpu_weight.pt, no repack', original_model=True),)
    description = "inc plus the quantized_hpu_weight.pt cache INC's default-format Gaudi loader reads without repacking"

    def finish(self, into: Path, shards: list[Path], config: dict) -> int:
        super().finish(into, shards, config)
        # Made from the finished checkpoint, as INC makes it on its first Gaudi load.
        return write_default_hpu_cache(into, config)


def write_default_hpu_cache(into: Path, config: dict) -> int:
    """INC's default-format Gaudi cache beside the INC checkpoint just written into ``into``: the file
    INC's first ``load(..., format="default", device="hpu")`` saves (the module's docstring says
    what decides its bytes). Each quantized layer is re-laid out for Gaudi into a scratch safetensors file, one
    layer in memory at a time; ``torch.save`` then reads every tensor through a memory map. Returns the
    cache's size in bytes."""
    spill = into / ".woqconv-hpu-layers.safetensors"
    maps: list = []
    try:
        # Read as INC wrote it: woqconv's own output, so the zero points are the v1 its config declares.
        with Checkpoint.open(into) as ckpt:
            fmt = detect(ckpt)
            family = LayerFamily.registry[fmt.family]
            names = family.layer_prefixes(ckpt)
            entries = {module: entry for module, (_, entry) in parse_qconfig(ckpt).items()}
            model = meta_model(config)
            owned = {t for name in names for t in family.owned_tensors(ckpt, name)}

            def args(layer) -> dict:
                module = layer.name[: -len(".linear")] if layer.name not in entries and layer.name.endswith(".linear") else layer.name
                entry = entries[module]
                fp8 = f"{layer.name}.scale_bf16_to_fp8"
                return {"bias": linear_has_bias(model, module), "desc_act": bool(entry.get("desc_act", False)),
                        "group_size": entry.get("group_size"), "scale_bf16_to_fp8": ckpt.read(fp8) if ckpt.has(fp8) else None}

            # The layers' small tensors fix every shape (and whether INC keeps a g_idx); the codes come after.
            specs = []
            for name in names:
                small = family.read(ckpt, name, fmt, codes=False)
                small.codes = torch.zeros(small.out_features, small.in_features, dtype=torch.uint8)
                specs += [TensorSpec(k, safetensors_io.DTYPE_NAMES[t.dtype], tuple(t.shape))
                          for k, t in hpu_layer_tensors(small, **args(small)).items()]
            writer = SafetensorsWriter(spill, specs, {"format": "pt"})
            try:
                for name in names:
                    layer = family.read(ckpt, name, fmt)
                    for key, t in hpu_layer_tensors(layer, **args(layer)).items():
                        writer.write(key, t)
                writer.close()
            except BaseException:
                writer.abort()
                raise
            generated = {s.name for s in specs}
        # The rest exactly as quantized_weight.pt holds it (INC assigns those tensors, storages and all).
        stored = torch.load(into / INC_WEIGHTS, mmap=True, weights_only=True)
        tensors = {k: v for k, v in stored.items() if k not in owned and k not in generated}
        tensors.update(mapped_tensors(spill, maps))
        try:
            path = write_cache(config, tensors, into)
        except ValueError as e:  # the architecture and the tensors disagree in a way the plan did not foresee
            raise WoqconvError(f"INC's Gaudi cache ({HPU_WEIGHT_NAME}) cannot be built: {e}") from None
        return path.stat().st_size
    finally:
        close_maps(maps)
        spill.unlink(missing_ok=True)
