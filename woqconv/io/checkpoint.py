"""A checkpoint directory on disk: its config, its weight shards, and everything else in it.

Knows nothing about quantization formats; adapters in ``formats/`` read tensors through it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import torch
from ..errors import FormatError
from .openvino_file import BIN_NAME as OPENVINO_BIN
from .openvino_file import CONFIG_NAME as OPENVINO_CONFIG
from .openvino_file import XML_NAME as OPENVINO_XML
from .openvino_file import OpenVinoFile
from .safetensors_io import SafetensorsFile, TensorInfo
from ..wording import counted

if TYPE_CHECKING:  # imported when a checkpoint holds one (see _torch_file)
    from .torch_file import TorchFile

CONFIG_NAME = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Files that only describe quantization; a target writes its own and drops the others.
QUANT_CONFIG_FILES = ("quantize_config.json", "quantization_config.json", "qconfig.json", OPENVINO_CONFIG)
PICKLE_WEIGHTS_SUFFIXES = (".bin", ".pt", ".pth")
# INC's "default" format: torch.save'd state dict (+ qconfig.json), or safetensors shards + this index.
INC_WEIGHTS = "quantized_weight.pt"
INC_SHARD_INDEX = "model_bin_index.json"
# Caches INC writes beside the weights on a Gaudi load (FORMATS.md 3.5). Derived from the primary
# weights; a conversion never carries a stale one across.
HPU_CACHES = ("hpu_model.safetensors", "quantized_hpu_weight.safetensors", "quantized_hpu_weight.pt")


# What a model carries beside its weights that loaders read: the architecture, generation defaults and the
# tokenizer (top-level names, fnmatch patterns as huggingface_hub takes them).
MODEL_FILE_PATTERNS = (
    CONFIG_NAME,
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
    "*.tiktoken",
)


# Configs and indexes are kilobytes (a 400B model's index is a few MB); a larger "JSON" file is not
# read into memory.
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: Path) -> dict:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FormatError("file not found", file=path) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", file=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError("not a regular file", file=path)  # a FIFO would block the read forever
    if st.st_size > MAX_JSON_BYTES:
        raise FormatError(f"{st.st_size} bytes is too large for a JSON config (limit {MAX_JSON_BYTES})", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"cannot read: {e}", file=path) from None
    try:
        data = json.loads(text)
    # ValueError: JSONDecodeError, or an integer too long to convert; RecursionError: absurd nesting.
    except (ValueError, RecursionError) as e:
        raise FormatError(f"invalid JSON ({str(e)[:120]})", file=path) from None
    if not isinstance(data, dict):
        raise FormatError("expected a JSON object", file=path)
    return data


def dump_json(data: dict) -> str:
    """The one JSON style woqconv writes: stable key order, as transformers writes configs."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclass
class Checkpoint:
    """An opened checkpoint directory. Tensors stay on disk until :meth:`read` asks for one."""

    root: Path
    config: dict
    shards: dict[str, SafetensorsFile]  # relative file name -> open file
    locations: dict[str, str]  # tensor name -> shard file name
    index: dict | None  # parsed model.safetensors.index.json, if sharded
    other_files: list[str] = field(default_factory=list)  # relative paths copied as they are
    container: str = "safetensors"  # "safetensors", "inc-pt" (quantized_weight.pt), "hpu-cache" or "openvino-ir"
    # Architecture files the checkpoint lacks, taken from its original model (attach_base): name -> path.
    borrowed: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, *, hpu_cache: bool = False) -> "Checkpoint":
        """Open a checkpoint directory; ``hpu_cache=True`` reads INC's Gaudi cache instead of the weights."""
        root = _checked_root(path)
        config = read_json(root / CONFIG_NAME) if (root / CONFIG_NAME).exists() else {}
        shard_names, weight_map, index, container = _weight_files(root, hpu_cache=hpu_cache)
        shards: dict[str, SafetensorsFile | TorchFile] = {}
        locations: dict[str, str] = {}
        try:
            for name in shard_names:
                shard_path = _inside(root, name, INDEX_NAME if weight_map is not None else name)
                if container == "openvino-ir":
                    shards[name] = OpenVinoFile(shard_path)
                else:
                    shards[name] = _torch_file(shard_path) if name.endswith(PICKLE_WEIGHTS_SUFFIXES) else SafetensorsFile(shard_path)
                for tensor in shards[name].tensors:
                    if tensor in locations:
                        raise FormatError(f"tensor appears in two shards ({locations[tensor]}, {name})", file=shard_path, tensor=tensor)
                    locations[tensor] = name
            if weight_map is not None:
                for tensor, shard in weight_map.items():
                    if locations.get(tensor) != shard:
                        raise FormatError(f"index places tensor in {shard} but that shard does not hold it", file=root / INDEX_NAME, tensor=tensor)
                extra = set(locations) - set(weight_map)
                if extra:
                    raise FormatError(f"shards hold {len(extra)} tensors the index does not list, e.g. {sorted(extra)[0]}", file=root / INDEX_NAME)
        except BaseException:
            for f in shards.values():
                f.close()
            raise
        weight_files = set(shard_names) | {INDEX_NAME, INC_SHARD_INDEX} | ({OPENVINO_BIN} if container == "openvino-ir" else set())
        others = []
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if rel in weight_files or not p.is_file() or rel.startswith("."):
                continue
            others.append(rel)
        return cls(root, config, shards, locations, index, others, container)

    @property
    def has_config(self) -> bool:
        """Whether the architecture is known: the checkpoint's own config.json, or its base model's."""
        return (self.root / CONFIG_NAME).exists() or CONFIG_NAME in self.borrowed

    def path_of(self, rel: str) -> Path:
        """Where one of ``other_files`` lies: in the checkpoint, or in the base model it was borrowed from."""
        return self.borrowed.get(rel, self.root / rel)

    def attach_base(self, root: Path, files, config: dict) -> list[str]:
        """Take the base model's architecture ``files`` (in ``root``; ``config`` is its config.json, read) where
        the checkpoint has none of its own; returns the names taken."""
        taken = []
        for name in files:
            if (self.root / name).exists():
                continue
            if name == CONFIG_NAME:
                self.config = dict(config)
            self.borrowed[name] = root / name
            self.other_files.append(name)
            taken.append(name)
        self.other_files.sort()
        return taken

    # -- tensors -----------------------------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        return self.shards[self.locations[name]].tensors[name]

    def has(self, name: str) -> bool:
        return name in self.locations

    def read(self, name: str) -> torch.Tensor:
        if name not in self.locations:
            raise FormatError("tensor not found in checkpoint", file=self.root, tensor=name)
        return self.shards[self.locations[name]].read(name)

    def read_bytes(self, name: str) -> np.ndarray:
        """A tensor's bytes as stored (uint8), without torch; safetensors shards only."""
        if name not in self.locations:
            raise FormatError("tensor not found in checkpoint", file=self.root, tensor=name)
        return self.shards[self.locations[name]].read_bytes(name)

    def file_of(self, name: str) -> Path:
        return self.shards[self.locations[name]].path

    @property
    def tensor_names(self) -> list[str]:
        return sorted(self.locations)

    @property
    def weight_bytes(self) -> int:
        return sum(f.size for f in self.shards.values())

    def close(self) -> None:
        for f in self.shards.values():
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


FileIdentity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True)
class FileSnapshot:
    """Every regular file under a directory (hidden ones aside, links followed) by relative name, with
    what changes when it is written to (size, modification or change time) or replaced (device, inode).
    A conversion takes one before it reads anything and checks it before its output appears: one that
    read a file while it was being rewritten could hold parts of two versions of it."""

    root: Path
    identities: dict[str, FileIdentity]

    @classmethod
    def take(cls, path: str | os.PathLike) -> "FileSnapshot":
        root = Path(path)
        found = {}
        for p in sorted(root.rglob("*")) if root.is_dir() else []:
            rel = p.relative_to(root).as_posix()
            if not rel.startswith(".") and "/." not in rel and (identity := _identity(p)) is not None:
                found[rel] = identity
        return cls(root, found)

    def check_unchanged(self) -> None:
        """Raise, naming the first one, if any file is no longer what it was: written to, replaced or removed."""
        changed = [rel for rel, identity in self.identities.items() if _identity(self.root / rel) != identity]
        if changed:
            more = f" (and {counted(len(changed) - 1, 'other file')})" if len(changed) > 1 else ""
            raise FormatError(f"changed while it was being converted{more}: the output could mix two versions, so nothing "
                              "was written", file=self.root / changed[0])


def _identity(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _checked_root(path: str | os.PathLike) -> Path:
    root = Path(path)
    if not root.exists():
        raise FormatError("no such file or directory", file=root)
    if not root.is_dir():
        raise FormatError("expected a checkpoint directory", file=root)
    _refuse_escaping_links(root)
    return root


def _torch_file(path: Path):
    """INC's ``torch.save`` weights: read with torch's own loader, which this module imports only then."""
    from .torch_file import TorchFile

    return TorchFile(path)


def _weight_files(root: Path, *, hpu_cache: bool = False) -> tuple[list[str], dict | None, dict | None, str]:
    """Which files hold the weights: (file names, weight map, parsed index, container kind)."""
    if hpu_cache:
        caches = [c for c in HPU_CACHES if (root / c).exists()]
        if not caches:
            raise FormatError("no INC Gaudi cache (hpu_model.safetensors, quantized_hpu_weight.*) here", file=root)
        return [caches[0]], None, None, "hpu-cache"
    if (root / INDEX_NAME).exists():
        index = read_json(root / INDEX_NAME)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise FormatError("index has no valid weight_map", file=root / INDEX_NAME)
        return sorted(set(weight_map.values())), weight_map, index, "safetensors"
    if (root / SINGLE_WEIGHTS).exists():
        return [SINGLE_WEIGHTS], None, None, "safetensors"
    if (root / INC_WEIGHTS).exists():
        return [INC_WEIGHTS], None, None, "inc-pt"
    if (root / INC_SHARD_INDEX).exists():
        # INC's sharded default format loads every .safetensors file in the directory.
        shards = sorted(p.name for p in root.iterdir() if p.suffix == ".safetensors" and p.name not in HPU_CACHES)
        if not shards:
            raise FormatError("INC shard index but no .safetensors shards", file=root / INC_SHARD_INDEX)
        return shards, None, None, "safetensors"
    if (root / OPENVINO_XML).exists():
        # OpenVINO IR (optimum-intel's export, NNCF's compressed models): the graph names the weights
        _inside(root, OPENVINO_BIN, OPENVINO_XML)
        return [OPENVINO_XML], None, None, "openvino-ir"
    caches = [c for c in HPU_CACHES if (root / c).exists()]
    if caches:
        return [caches[0]], None, None, "hpu-cache"
    found = sorted(p.name for p in root.iterdir() if p.suffix == ".safetensors")
    if len(found) == 1:
        return found, None, None, "safetensors"
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_WEIGHTS_SUFFIXES)
    if pickles:
        raise FormatError(f"only pickle weights ({', '.join(pickles)}) and no INC qconfig.json; this format needs safetensors", file=root)
    raise FormatError(f"no model.safetensors, model.safetensors.index.json, INC quantized_weight.pt or {OPENVINO_XML}", file=root)


def _link_roots(root: Path) -> tuple[Path, ...]:
    """Where the checkpoint's symlinks may lead: inside it, and for a huggingface_hub cache snapshot
    (``<repo>/snapshots/<rev>/``, every file a link to ``../../blobs/<hash>``) into its own repo's blobs."""
    real_root = root.resolve()
    if real_root.parent.name == "snapshots" and (real_root.parent.parent / "blobs").is_dir():
        return real_root, real_root.parent.parent / "blobs"
    return (real_root,)


def _within(target: Path, roots: tuple[Path, ...]) -> bool:
    return any(target == r or r in target.parents for r in roots)


def _allowed_target(target: Path, roots: tuple[Path, ...]) -> bool:
    """Inside the checkpoint (or its snapshot's blobs), or a blob of a Hub cache: woqconv's view of a
    Hub source is a temporary directory of links to the snapshot's files, which resolve there."""
    return _within(target, roots) or _hub_cache_blob(target)


def _refuse_escaping_links(root: Path) -> None:
    """Every symlink in the checkpoint must stay inside it, whatever it names (config, shard, tokenizer,
    a directory): a file reached through one would be read, and copied into the output, from anywhere
    on the disk. Checked once, up front, for the whole tree."""
    roots = _link_roots(root)
    for p in root.rglob("*"):
        if p.is_symlink():
            try:
                target = p.resolve()
            except (OSError, RuntimeError):  # a loop: Python 3.11 raises RuntimeError, later ones OSError
                raise FormatError("is a symlink loop", file=p) from None
            if not _allowed_target(target, roots):
                raise FormatError(f"is a symlink to {os.readlink(p)!r}, outside the checkpoint", file=p)


def _inside(root: Path, rel: str, referrer: str) -> Path:
    """Resolve a file name taken from the checkpoint's own metadata, refusing escapes."""
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise FormatError(f"names a file outside the checkpoint: {rel!r}", file=root / referrer)
    path = root / candidate
    if "\0" in rel or not path.exists():
        raise FormatError(f"names a missing shard: {rel!r}", file=root / referrer)
    if not path.is_file():  # a directory ("" names the checkpoint itself), a FIFO, a device
        if rel == referrer:
            raise FormatError("not a regular file", file=path)
        raise FormatError(f"names {rel!r}, which is not a regular file", file=root / referrer)
    if not _allowed_target(path.resolve(), _link_roots(root)):
        raise FormatError(f"{rel!r} is a symlink that resolves outside the checkpoint", file=root / referrer)
    return path


def _hub_cache_blob(real: Path) -> bool:
    """A file in a Hugging Face Hub cache's ``blobs/`` folder (``models--org--name/blobs/<hash>``).

    Hub cache snapshots are symlinks into their repo's ``blobs/``, outside the snapshot directory;
    following them reads the same repo's content, not an arbitrary file.
    """
    repo = real.parent.parent
    return real.parent.name == "blobs" and repo.name.startswith("models--") and (repo / "snapshots").is_dir()
