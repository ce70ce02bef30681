"""Atomic output directories: build in a hidden sibling, rename into place only when complete."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from ..errors import BadArgument, OutputError
from .checkpoint import CONFIG_NAME, INC_WEIGHTS, OPENVINO_XML, QUANT_CONFIG_FILES

PARTIAL_SUFFIX = ".woqconv-partial"
REPLACED_SUFFIX = ".woqconv-replaced"


def partial_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}{PARTIAL_SUFFIX}"


def replaced_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}{REPLACED_SUFFIX}"


def output_path(out: str | os.PathLike) -> Path:
    """The output directory as given; an empty name is refused, not read as the current directory."""
    if not os.fspath(out).strip():
        raise BadArgument("`out` is empty: name the output directory")
    return Path(out)


def _holds_a_checkpoint(path: Path) -> bool:
    """What ``overwrite`` may replace: a model directory (a config, weights), such as an earlier output."""
    names = {p.name for p in path.iterdir()}
    return bool(names & {CONFIG_NAME, INC_WEIGHTS, OPENVINO_XML, *QUANT_CONFIG_FILES}) or any(n.endswith(".safetensors") for n in names)


def check_output(src: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse outputs that would lose data: the input itself, inside it, around it, non-empty (unless
    ``overwrite``), or, even with ``overwrite``, a non-empty directory that holds no checkpoint."""
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
        if any(out.iterdir()):
            if not overwrite:
                raise OutputError("exists and is not empty (pass `overwrite=True` to replace it)", file=out)
            if not _holds_a_checkpoint(out):
                raise OutputError("exists and holds no checkpoint (no config.json, weights or quantization config): `overwrite` "
                                  "replaces only a model directory, such as an earlier output; empty it or choose another", file=out)
    parent = out_r.parent
    if not parent.exists():
        raise OutputError(f"parent directory {parent} does not exist", file=out)
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, not a directory", file=out)


def start_partial(out: Path) -> tuple[Path, list[str]]:
    """Create the temporary sibling; clean what a killed run left behind. Returns (dir, names cleaned)."""
    partial = partial_dir_for(out)
    cleaned = []
    for leftover in (partial, replaced_dir_for(out)):
        if leftover.exists() or leftover.is_symlink():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            cleaned.append(leftover.name)
    partial.mkdir()
    return partial, cleaned


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (filesystem or kernel without it): fall back to two renames


def commit_partial(partial: Path, out: Path) -> None:
    """Move the finished directory into place; an existing (allowed) OUT is replaced only now.

    Replacing swaps the two directories atomically where the kernel can, so a kill at any moment
    leaves OUT complete, old or new; elsewhere OUT is renamed aside first, and a kill between the two
    renames leaves ``.OUT.woqconv-replaced``, which the next run removes and names.
    """
    _fsync_dir(partial)
    if out.exists():
        if _exchange(partial, out):
            _fsync_dir(out.parent)
            shutil.rmtree(partial)  # now holds the replaced OUT
            return
        trash = replaced_dir_for(out)
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(out, trash)
        os.rename(partial, out)
        _fsync_dir(out.parent)
        shutil.rmtree(trash)
        return
    os.rename(partial, out)
    _fsync_dir(out.parent)


def write_error(e: OSError, out: Path) -> OutputError:
    """A failed write (full disk, quota, I/O error) as the one-line error naming OUT; the partial
    directory is already gone when this is raised."""
    name = f" ({Path(e.filename).name})" if getattr(e, "filename", None) else ""
    return OutputError(f"writing the output failed{name}: {e.strerror or e}; nothing was written", file=out)


def discard_partial(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
