"""The original, unquantized model a checkpoint was made from: its architecture files, never its weights.

INC's default format (``qconfig.json`` + ``quantized_weight.pt``) records no architecture: INC's own
``load(..., original_model=...)`` needs the user to build the original model. woqconv asks for the same
thing, as ``--base-model PATH_OR_REPO``, and takes from it only what a converted checkpoint's loaders
read beside the weights: ``config.json``, ``generation_config.json`` and the tokenizer files. From the
Hub only those files are downloaded, through huggingface_hub, so ``HF_HUB_OFFLINE``, ``HF_HOME`` and the
cache mean what they mean there.

A base must be the checkpoint's own architecture: :func:`mismatch` compares it with the checkpoint's
tensors and names the first difference.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .io.checkpoint import CONFIG_NAME, MODEL_FILE_PATTERNS, read_json
from .errors import FormatError, WoqconvError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
GIVEN = "given"
RECORDED = "qconfig.json model_path"
# Tensors INC adds to a quantized linear or its MulLinear wrapper that the original module never had.
_INC_EXTRAS = (".scale_bf16_to_fp8", ".input_scale")


def is_base_file(name: str) -> bool:
    return "/" not in name and not name.endswith(_WEIGHT_SUFFIXES) and any(fnmatch.fnmatch(name, p) for p in MODEL_FILE_PATTERNS)


@dataclass(frozen=True)
class BaseModel:
    """The architecture files of an original model, readable in ``root``."""

    name: str  # as given or recorded: a path, or a Hub repo id
    root: Path
    files: tuple[str, ...]  # the base files found in root, config.json among them
    origin: str  # GIVEN or RECORDED
    commit: str | None = None  # the Hub snapshot, for a repo id

    @property
    def label(self) -> str:
        return f"{self.name}@{self.commit}" if self.commit else self.name

    @cached_property
    def config(self) -> dict:
        config = dict(read_json(self.root / CONFIG_NAME))
        config.pop("quantization_config", None)  # a quantized "base" describes itself, not the original
        return config

    def describe(self) -> str:
        how = "given" if self.origin == GIVEN else "recorded in qconfig.json as model_path"
        return f"{self.label} ({how})"


def resolve(spec: str | os.PathLike, *, origin: str = GIVEN, revision: str | None = None, cache_only: bool = False) -> BaseModel:
    """A base model from a local directory or a Hub repo id; only its base files are fetched.

    ``cache_only`` looks in the local Hub cache and never on the network (a recorded model_path is used
    only when it is already at hand)."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FormatError("no config.json here: the base model is the original unquantized model (a directory with "
                              "config.json, or a Hub repo id)", file=text)
        return BaseModel(text, path, _base_files(path), origin)
    from .hub_access import is_repo_id

    if path.exists() or not is_repo_id(text):
        raise FormatError("not a directory and not a Hub repo id (org/name): the base model is the original unquantized model",
                          file=text)
    return _from_hub(text, origin=origin, revision=revision, cache_only=cache_only)


def _from_hub(repo_id: str, *, origin: str, revision: str | None, cache_only: bool) -> BaseModel:
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from .hub_access import hub_error, quiet_hub

    try:
        with quiet_hub(True):
            snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILE_PATTERNS),
                                              local_files_only=cache_only))
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.HTTPError, ConnectionError) as e:
        raise hub_error(repo_id, e) from None
    if not (snapshot / CONFIG_NAME).is_file():
        raise FormatError("the repo has no config.json: the base model is the original unquantized model", file=f"{repo_id}@{snapshot.name}")
    return BaseModel(repo_id, snapshot, _base_files(snapshot), origin, commit=snapshot.name)


def _base_files(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in root.iterdir() if p.is_file() and is_base_file(p.name)))


def recorded_model_path(root: Path) -> str | None:
    """The original model INC recorded in its ``qconfig.json`` entries (``model_path``), if any."""
    path = root / "qconfig.json"
    if not path.is_file():
        return None
    try:
        raw = read_json(path)
    except WoqconvError:
        return None
    found = Counter(
        entry["model_path"]
        for value in raw.values() if isinstance(value, dict)
        for entry in value.values() if isinstance(entry, dict) and isinstance(entry.get("model_path"), str) and entry["model_path"]
    )
    return found.most_common(1)[0][0] if found else None


def find_recorded(model_path: str | None) -> BaseModel | None:
    """The recorded original model when it is a local directory (as INC saw it) or a cached Hub repo."""
    if not model_path:
        return None
    try:
        return resolve(model_path, origin=RECORDED, cache_only=True)
    except WoqconvError:
        return None


def missing_architecture(root: Path, target: str | None = None) -> str:
    """The one line saying a checkpoint records no architecture, what needs it, and what to pass."""
    recorded = recorded_model_path(root)
    need = f"`to={target}` needs one" if target else "its architecture is unknown"
    where = ""
    if recorded:
        where = f"; qconfig.json records model_path {recorded!r}, which is neither a local directory nor a Hub repo in the local cache"
    return (f"the checkpoint records no architecture (no config.json; INC's default format keeps none) and {need}: pass "
            f"`base_model=PATH_OR_REPO`, the original unquantized model{where}")


# -- does the base describe this checkpoint? ------------------------------------------------------


def _first_index(name: str) -> int | None:
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def mismatch(config: dict, layers, tensors: dict[str, tuple[int, ...]], owned: set[str]) -> str | None:
    """The first way the architecture ``config`` differs from a checkpoint, or None when it matches.

    ``layers`` are the checkpoint's quantized layer shells (name, in_features, out_features),
    ``tensors`` every tensor's shape by name, ``owned`` the tensors that belong to quantized layers.
    Checked in this order: hidden size, number of blocks, each quantized module's name, its in/out
    features, then every unquantized tensor's name and shape."""
    import torch

    from .architecture import meta_model

    try:
        model = meta_model(config)
    except Exception as e:  # transformers' own verdict on the config, whatever it raises
        return f"transformers cannot build its architecture ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    modules = dict(model.named_modules())
    params = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None)
    emb = model.get_input_embeddings()
    emb_name = next((f"{n}.weight" for n, m in modules.items() if m is emb), None)
    if hidden is not None and emb_name in tensors and tensors[emb_name][-1] != hidden:
        return f"hidden size {hidden}, but the checkpoint's {emb_name} is {_shape(tensors[emb_name])}"
    blocks = getattr(cfg, "num_hidden_layers", None)
    seen = {i for n in tensors if (i := _first_index(n)) is not None}
    if blocks is not None and seen and max(seen) + 1 != blocks:
        return f"{blocks} layers, but the checkpoint has {max(seen) + 1}"
    for layer in sorted(layers, key=lambda x: x.name):
        module_name = layer.name[: -len(".linear")] if layer.name.endswith(".linear") and layer.name not in modules else layer.name
        module = modules.get(module_name)
        if not isinstance(module, torch.nn.Linear):
            return f"no linear module {module_name} (the checkpoint quantized one)"
        if (module.in_features, module.out_features) != (layer.in_features, layer.out_features):
            return (f"{module_name} has in_features {module.in_features}, out_features {module.out_features}; the checkpoint's "
                    f"has {layer.in_features}, {layer.out_features}")
    for name in sorted(tensors):
        if name in owned or name.endswith(_INC_EXTRAS):
            continue
        if name not in params:
            return f"no tensor {name} (the checkpoint has one)"
        if params[name] != tuple(tensors[name]):
            return f"{name} is {_shape(params[name])}, the checkpoint's is {_shape(tensors[name])}"
    return None


def _shape(shape) -> str:
    return " x ".join(map(str, shape)) or "a scalar"


def check_matches(base: BaseModel, src) -> None:
    """Refuse, in one line, a base whose architecture is not the checkpoint's (``src``: a QuantizedCheckpoint)."""
    ckpt = src.ckpt
    problem = mismatch(base.config, src.layers, {t: tuple(ckpt.info(t).shape) for t in ckpt.tensor_names}, set(src.owned_tensors()))
    if problem:
        raise FormatError(f"is not this checkpoint's architecture: {problem}", file=base.label)
