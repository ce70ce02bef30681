"""Atomic output directories: build in a hidden sibling, rename into place only when complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import OutputError

PARTIAL_SUFFIX = ".woqconv-partial"


def partial_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}{PARTIAL_SUFFIX}"


def check_output(src: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse outputs that would lose data: the input itself, inside it, around it, or non-empty."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r:
        raise OutputError("output is the input checkpoint itself; choose another directory", file=out)
    if src_r in out_r.parents:
        raise OutputError(f"output lies inside the input checkpoint {src}; choose a directory outside it", file=out)
    if out_r in src_r.parents:
        raise OutputError(f"output contains the input checkpoint {src}; choose another directory", file=out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputError("exists and is not a directory", file=out)
        if any(out.iterdir()) and not overwrite:
            raise OutputError("exists and is not empty (pass --overwrite to replace it)", file=out)
    if not out_r.parent.exists():
        raise OutputError(f"parent directory {out_r.parent} does not exist", file=out)


def start_partial(out: Path) -> tuple[Path, bool]:
    """Create the temporary sibling; clean one a killed run left behind. Returns (dir, cleaned)."""
    partial = partial_dir_for(out)
    cleaned = partial.exists()
    if cleaned:
        shutil.rmtree(partial)
    partial.mkdir()
    return partial, cleaned


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_partial(partial: Path, out: Path) -> None:
    """Move the finished directory into place; an existing (allowed) OUT is replaced only now."""
    _fsync_dir(partial)
    trash = None
    if out.exists():
        trash = out.parent / f".{out.name}.woqconv-replaced"
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(out, trash)
    os.rename(partial, out)
    _fsync_dir(out.parent)
    if trash is not None:
        shutil.rmtree(trash)


def discard_partial(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
