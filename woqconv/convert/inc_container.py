"""INC's "default" container: one ``torch.save`` of the whole state dict (``quantized_weight.pt``), and
the Gaudi cache INC makes from it (``quantized_hpu_weight.pt``).

``torch.save`` needs every tensor as a Python object at once. To keep memory bounded anyway, the
converter first streams safetensors shards to disk, then hands ``torch.save`` tensors that are
memory-mapped views of those files: the bytes pass through the page cache, never all resident.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..io import safetensors_io
from .._lazy import torch
from ..io.checkpoint import INC_WEIGHTS
from ..errors import WoqconvError
from ..io.safetensors_io import SafetensorsFile


def safetensors_to_torch_save(shards: list[Path], out: Path) -> None:
    maps: list = []
    state: dict[str, torch.Tensor] = {}
    try:
        for path in shards:
            state.update(_mapped(path, maps))
        # Deterministic key order, as INC's state_dict() would give for the same module tree is not
        # knowable here; sorted names at least make repeated conversions byte-identical.
        torch.save(dict(sorted(state.items())), out)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
    finally:
        state.clear()
        _close(maps)


def _mapped(path: Path, maps: list) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of its memory map (appended to ``maps``), each over
    exactly its own bytes, as torch.save wants a storage."""
    meta = SafetensorsFile(path)
    tensors = {}
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if meta.size else None
        maps.append(mm)
        for name in sorted(meta.tensors):
            info = meta.tensors[name]
            dtype = safetensors_io.DTYPES[info.dtype]
            if info.nbytes == 0:
                tensors[name] = torch.empty(info.shape, dtype=dtype)
                continue
            # frombuffer over a read-only map warns that writes would fail; nothing writes here.
            view = memoryview(mm)[info.start : info.end]
            with _quiet_readonly_warning():
                tensors[name] = torch.frombuffer(view, dtype=dtype).reshape(info.shape)
    finally:
        meta.close()
    return tensors


def _close(maps: list) -> None:
    for mm in maps:
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a view still alive; the map is released with it


def write_default_hpu_cache(into: Path, config: dict) -> int:
    """INC's default-format Gaudi cache beside the INC checkpoint just written into ``into``: the file
    INC's first ``load(..., format="default", device="hpu")`` saves (formats/inc_hpu_cache.py says what
    decides its bytes). Each quantized layer is re-laid out for Gaudi into a scratch safetensors file, one
    layer in memory at a time; ``torch.save`` then reads every tensor through a memory map. Returns the
    cache's size in bytes."""
    from ..architecture import meta_model
    from ..formats import inc_hpu_cache
    from ..formats.inc import parse_qconfig
    from ..io.safetensors_io import SafetensorsWriter, TensorSpec
    from ..source import open_checkpoint

    spill = into / ".woqconv-hpu-layers.safetensors"
    maps: list = []
    try:
        with open_checkpoint(into) as ckpt:
            entries = {module: entry for module, (_, entry) in parse_qconfig(ckpt.ckpt).items()}
            model = meta_model(config)
            owned = set(ckpt.owned_tensors())

            def args(layer) -> dict:
                module = layer.name[: -len(".linear")] if layer.name not in entries and layer.name.endswith(".linear") else layer.name
                entry = entries[module]
                fp8 = f"{layer.name}.scale_bf16_to_fp8"
                return {"bias": inc_hpu_cache.linear_has_bias(model, module), "desc_act": bool(entry.get("desc_act", False)),
                        "group_size": entry.get("group_size"), "scale_bf16_to_fp8": ckpt.ckpt.read(fp8) if ckpt.ckpt.has(fp8) else None}

            # The layers' small tensors fix every shape (and whether INC keeps a g_idx); the codes come after.
            specs = []
            for name in ckpt.layer_names:
                small = ckpt.read_layer(name, codes=False)
                small.codes = torch.zeros(small.out_features, small.in_features, dtype=torch.uint8)
                specs += [TensorSpec(k, safetensors_io.DTYPE_NAMES[t.dtype], tuple(t.shape))
                          for k, t in inc_hpu_cache.hpu_layer_tensors(small, **args(small)).items()]
            writer = SafetensorsWriter(spill, specs, {"format": "pt"})
            try:
                for name in ckpt.layer_names:
                    layer = ckpt.read_layer(name)
                    for key, t in inc_hpu_cache.hpu_layer_tensors(layer, **args(layer)).items():
                        writer.write(key, t)
                writer.close()
            except BaseException:
                writer.abort()
                raise
            generated = {s.name for s in specs}
        # The rest exactly as quantized_weight.pt holds it (INC assigns those tensors, storages and all).
        stored = torch.load(into / INC_WEIGHTS, mmap=True, weights_only=True)
        tensors = {k: v for k, v in stored.items() if k not in owned and k not in generated}
        tensors.update(_mapped(spill, maps))
        try:
            path = inc_hpu_cache.write_cache(config, tensors, into)
        except ValueError as e:  # the architecture and the tensors disagree in a way the plan did not foresee
            raise WoqconvError(f"INC's Gaudi cache ({inc_hpu_cache.HPU_WEIGHT_NAME}) cannot be built: {e}") from None
        return path.stat().st_size
    finally:
        _close(maps)
        spill.unlink(missing_ok=True)


class _quiet_readonly_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message="The given buffer is not writable")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
