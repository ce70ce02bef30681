"""``woqconv inspect org/name``: a Hub checkpoint described from its config and safetensors headers.

The headers come from huggingface_hub's safetensors-metadata API (range requests on each shard's
first bytes); the small config files are downloaded. No tensor data is read, so what only the data
can tell (symmetry found, the zero-point convention the data proves, the g_idx class) is reported as
unknown. Offline, a cached snapshot is inspected completely instead; so is an OpenVINO IR repo, whose
weights are known only from its graph and .bin (it is downloaded first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..io.checkpoint import INDEX_NAME, Checkpoint, read_json
from ..errors import FormatError
from ..inspect_report import InspectReport, header_report
from ..io.openvino_file import XML_NAME as OPENVINO_XML
from ..io.safetensors_io import TensorInfo
from .fetch import ALLOW_PATTERNS, hub_checkout, hub_error, named_as, quiet_hub, selected

# Small files read by format detection; the rest of the selection is weights or carried along.
_CONFIG_FILES = ("config.json", "quantize_config.json", "quantization_config.json", "qconfig.json")


class HeaderOnlyShard:
    """A remote safetensors file known by its header: tensor names, dtypes, shapes and offsets."""

    def __init__(self, label: str, tensors: dict[str, TensorInfo], size: int):
        self.path = label
        self.tensors = tensors
        self.size = size

    def read(self, name: str):
        raise FormatError("tensor data is not read by a remote inspect", file=self.path, tensor=name)

    def close(self) -> None:
        pass


def _shard(label: str, meta, size: int | None) -> HeaderOnlyShard:
    # safetensors data offsets are relative to the data buffer, which starts after the 8-byte length
    # and the header; the header length is not in the parsed metadata, so offsets stay relative here.
    tensors = {
        name: TensorInfo(name, t.dtype, tuple(t.shape), t.data_offsets[0], t.data_offsets[1])
        for name, t in meta.tensors.items()
    }
    data_bytes = max((t.end for t in tensors.values()), default=0)
    return HeaderOnlyShard(label, tensors, size if size is not None else data_bytes)


def _inspect_checkout(repo_id: str, revision: str | None, token: str | None, quiet: bool, inspect_local) -> InspectReport:
    """The full inspect of the repo's files (from the cache, fetched first when online), by ``inspect_local``."""
    with hub_checkout(repo_id, revision=revision, token=token, quiet=quiet) as src:
        report = inspect_local(src.path)
        report.path = src.label
        return report


def inspect_remote(repo_id: str, *, inspect_local: Callable[[Path], InspectReport], revision: str | None = None, token: str | None = None,
                   quiet: bool = False) -> InspectReport:
    """Describe ``repo_id`` without downloading its weights (offline: the cached snapshot, in full, by
    ``inspect_local``: woqconv.inspect, which plans the fixes it suggests, from a layer above this one)."""
    import httpx2
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError, SafetensorsParsingError

    if constants.is_offline_mode():
        return _inspect_checkout(repo_id, revision, token, quiet, inspect_local)
    api = HfApi(token=token)
    view = Path(tempfile.mkdtemp(prefix="woqconv-hub-"))
    try:
        with quiet_hub(quiet):
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            sizes = {s.rfilename: s.size for s in info.siblings or []}
            label = f"{repo_id}@{info.sha}"
            for name in _CONFIG_FILES:
                if name in sizes:
                    os.symlink(hf_hub_download(repo_id, name, revision=info.sha, token=token), view / name)
            # An OpenVINO IR has no header to range-read: which constants are weights, and how they are
            # compressed, is only known from the graph, whose constants live in openvino_model.bin. Its files
            # are fetched (into the Hub cache) and inspected in full.
            whole_checkout = OPENVINO_XML in sizes and not any(n.endswith(".safetensors") for n in selected(list(sizes)))
            if "quantized_weight.pt" in sizes and not any(n.endswith(".safetensors") for n in sizes):
                raise FormatError(
                    "INC's quantized_weight.pt is a torch pickle, not safetensors: its header cannot be read remotely; "
                    "convert it (which downloads it) or inspect a local copy", file=label,
                )
            meta = None if whole_checkout else api.get_safetensors_metadata(repo_id, revision=info.sha, token=token)
    except (HfHubHTTPError, httpx2.HTTPError, ConnectionError) as e:
        shutil.rmtree(view, ignore_errors=True)
        raise hub_error(repo_id, e) from None
    except (NotASafetensorsRepoError, SafetensorsParsingError) as e:
        shutil.rmtree(view, ignore_errors=True)
        raise FormatError(str(e).splitlines()[0], file=repo_id) from None
    except BaseException:
        shutil.rmtree(view, ignore_errors=True)
        raise
    if meta is None:
        shutil.rmtree(view, ignore_errors=True)
        return _inspect_checkout(repo_id, revision, token, quiet, inspect_local)
    try:
        shards = {name: _shard(f"{label}/{name}", m, sizes.get(name)) for name, m in meta.files_metadata.items()}
        locations = {t: name for name, s in shards.items() for t in s.tensors}
        index = {"weight_map": meta.weight_map, "metadata": meta.metadata or {}} if meta.sharded else None
        config = read_json(view / "config.json") if (view / "config.json").exists() else {}
        others = [n for n in selected(list(sizes)) if n not in shards and n != INDEX_NAME]
        ckpt = Checkpoint(view, config, shards, locations, index, others)  # type: ignore[arg-type]
        total = sum(s.size for s in shards.values()) + sum(sizes.get(n, 0) for n in others)  # as a local inspect counts
        with named_as(view, label):
            return header_report(ckpt, label=label, total_bytes=total)
    finally:
        shutil.rmtree(view, ignore_errors=True)


__all__ = ["inspect_remote", "ALLOW_PATTERNS"]
