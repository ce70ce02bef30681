"""A checkpoint directory on disk: its config, its weight shards, and everything else in it.

Knows nothing about quantization formats; adapters in ``formats/`` read tensors through it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import FormatError
from .safetensors_io import SafetensorsFile, TensorInfo

CONFIG_NAME = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Files that only describe quantization; a target writes its own and drops the others.
QUANT_CONFIG_FILES = ("quantize_config.json", "quantization_config.json")
PICKLE_WEIGHTS_SUFFIXES = (".bin", ".pt", ".pth")


def read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError("file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"cannot read: {e}", file=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"invalid JSON ({e})", file=path) from None
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

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Checkpoint":
        root = Path(path)
        if not root.exists():
            raise FormatError("no such file or directory", file=root)
        if not root.is_dir():
            raise FormatError("expected a checkpoint directory", file=root)
        config = read_json(root / CONFIG_NAME) if (root / CONFIG_NAME).exists() else {}
        index = None
        if (root / INDEX_NAME).exists():
            index = read_json(root / INDEX_NAME)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise FormatError("index has no weight_map", file=root / INDEX_NAME)
            shard_names = sorted(set(weight_map.values()))
        elif (root / SINGLE_WEIGHTS).exists():
            shard_names = [SINGLE_WEIGHTS]
            weight_map = None
        else:
            found = sorted(p.name for p in root.iterdir() if p.suffix == ".safetensors")
            pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_WEIGHTS_SUFFIXES)
            if len(found) == 1:
                shard_names, weight_map = found, None
            elif pickles:
                raise FormatError(f"only pickle weights ({', '.join(pickles)}); this format needs safetensors", file=root)
            else:
                raise FormatError("no model.safetensors or model.safetensors.index.json", file=root)
        shards: dict[str, SafetensorsFile] = {}
        locations: dict[str, str] = {}
        try:
            for name in shard_names:
                shard_path = _inside(root, name, INDEX_NAME)
                shards[name] = SafetensorsFile(shard_path)
                for tensor in shards[name].tensors:
                    if tensor in locations:
                        raise FormatError(f"tensor appears in two shards ({locations[tensor]}, {name})", file=root, tensor=tensor)
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
        weight_files = set(shard_names) | {INDEX_NAME}
        others = []
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if rel in weight_files or not p.is_file() or rel.startswith("."):
                continue
            others.append(rel)
        return cls(root, config, shards, locations, index, others)

    # -- tensors -----------------------------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        return self.shards[self.locations[name]].tensors[name]

    def has(self, name: str) -> bool:
        return name in self.locations

    def read(self, name: str) -> torch.Tensor:
        if name not in self.locations:
            raise FormatError("tensor not found in checkpoint", file=self.root, tensor=name)
        return self.shards[self.locations[name]].read(name)

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


def _inside(root: Path, rel: str, referrer: str) -> Path:
    """Resolve a file name taken from the checkpoint's own metadata, refusing escapes."""
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise FormatError(f"names a file outside the checkpoint: {rel!r}", file=root / referrer)
    path = root / candidate
    if not path.exists():
        raise FormatError(f"names a missing shard: {rel!r}", file=root / referrer)
    real_root = root.resolve()
    if real_root not in path.resolve().parents:
        raise FormatError(f"{rel!r} resolves outside the checkpoint (symlink?)", file=root / referrer)
    return path
