"""Hub access every layer may use: what a repo id looks like, huggingface_hub's errors as one woqconv line,
and quiet downloads. The workflows built on it (fetch a checkpoint, inspect remotely, push, model card,
migrate) are the ``hub`` package's; this module imports huggingface_hub only inside its functions."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FormatError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_repo_id(src: str | os.PathLike) -> bool:
    """``org/name`` that is not an existing local path: a Hub repo. A local directory always wins, and a path
    written as one (``./org/name``, ``/abs/path``, ``org/name/``) is never a repo id."""
    text = os.fspath(src)
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and ".." not in text.split("/")


def hub_error(repo_id: str, e: Exception, *, source: bool = True) -> FormatError:
    """huggingface_hub's exceptions as one woqconv line naming the repo. For a ``source`` (something to read,
    named as ``org/name``) the line also says that no local directory has that name: the user may have meant one."""
    from huggingface_hub import errors

    if isinstance(e, errors.RevisionNotFoundError):
        problem = "revision not found on the Hub"
    elif isinstance(e, errors.GatedRepoError):
        problem = "gated repo: accept its terms on the Hub and log in (hf auth login) or set HF_TOKEN"
    elif isinstance(e, errors.RepositoryNotFoundError):
        problem = "repository not found on the Hub (a private repo needs HF_TOKEN or hf auth login)"
    elif isinstance(e, errors.IncompleteSnapshotError):
        problem = "the cached snapshot is incomplete and the Hub cannot be reached"
    elif isinstance(e, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        problem = "not in the local Hub cache, and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network)"
    elif isinstance(e, errors.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        problem = f"Hub request failed (HTTP {status}): {str(e).splitlines()[0]}"
    else:
        problem = f"cannot reach the Hub (no network?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if source:
        problem = f"no such local directory, and as a Hub repo id: {problem}"
    return FormatError(problem, file=repo_id)


@contextmanager
def quiet_hub(quiet: bool) -> Iterator[None]:
    """Silence huggingface_hub's progress bars (``-q``, ``--format json``) for the block."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    if quiet and not was:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was:
            enable_progress_bars()
