"""A Hub repo as a conversion source: resolve the revision, download only what conversion reads.

Everything goes through huggingface_hub (``snapshot_download``), so ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``hf auth login`` mean what they mean there.
woqconv never writes into the Hub cache itself: it opens a temporary directory of links to the
selected files of the cached snapshot, so files outside the selection (``.bin`` duplicates, an old
INC Gaudi cache) are neither downloaded nor carried into the output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..io.checkpoint import HPU_CACHES, INC_WEIGHTS, MODEL_FILE_PATTERNS
from ..errors import FormatError, WoqconvError
from ..hub_access import hub_error, is_repo_id, quiet_hub  # noqa: F401  (hub's names)
from ..formats import HUB_FILE_PATTERNS
from ..io.openvino_file import XML_NAME as OPENVINO_XML

# What a conversion reads or carries along (top-level files only): safetensors weights and their index,
# the files of each format (their own containers and configs), and the model files (config, tokenizer,
# generation defaults).
ALLOW_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    *HUB_FILE_PATTERNS,
    *MODEL_FILE_PATTERNS,
]
# INC's Gaudi caches are dropped by every conversion (checkpoint.HPU_CACHES); sub-folders hold
# other exports (onnx/, original/), never the checkpoint woqconv reads.
IGNORE_PATTERNS = [*HPU_CACHES, "*/*"]

@dataclass
class HubSource:
    """A resolved Hub checkpoint, readable at ``path`` while the ``hub_checkout`` block is open."""

    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    commit: str  # the commit sha it resolved to
    path: Path  # a temporary directory of links to the selected snapshot files
    files: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}"

    def relabel(self, report) -> None:
        """Name this source as ``org/name@sha`` in a convert or verify report, not by its temporary view."""
        view = str(self.path)
        for attr in ("source", "against", "reference"):
            value = getattr(report, attr, None)
            if isinstance(value, str) and view in value:
                setattr(report, attr, value.replace(view, self.label))


def selected(names: list[str]) -> list[str]:
    """The repo files a conversion needs, by ALLOW_PATTERNS / IGNORE_PATTERNS."""
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(names, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))


@contextmanager
def hub_checkout(repo_id: str, *, revision: str | None = None, token: str | None = None, quiet: bool = False) -> Iterator[HubSource]:
    """Download (or find in the cache) what converting ``repo_id`` needs; yield it as a local directory.

    With ``HF_HUB_OFFLINE=1`` nothing touches the network: huggingface_hub resolves ``revision``
    through the cache's ``refs/`` and the snapshot must already be there.
    """
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        with quiet_hub(quiet):
            snapshot = Path(
                snapshot_download(
                    repo_id, revision=revision, token=token,
                    allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                )
            )
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.HTTPError, ConnectionError) as e:
        raise hub_error(repo_id, e) from None
    names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    files = selected(names)
    if not files:
        raise FormatError(f"no files a conversion reads in the snapshot {snapshot}", file=repo_id)
    label = f"{repo_id}@{snapshot.name}"
    if not any(f.endswith(".safetensors") or f in (INC_WEIGHTS, OPENVINO_XML) for f in files):
        raise FormatError("no safetensors weights (nor INC's quantized_weight.pt, nor an OpenVINO IR) in the repo; "
                          "woqconv does not read pickle .bin weights", file=label)
    view = Path(tempfile.mkdtemp(prefix="woqconv-hub-"))
    try:
        for rel in files:
            (view / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(snapshot / rel, view / rel)
        with named_as(view, label):
            yield HubSource(repo_id=repo_id, revision=revision, commit=snapshot.name, path=view, files=files)
    finally:
        shutil.rmtree(view, ignore_errors=True)


@contextmanager
def named_as(view: Path, label: str) -> Iterator[None]:
    """Errors about files in the temporary view name them as ``org/name@sha/<file>`` instead."""
    try:
        yield
    except WoqconvError as e:
        if e.file and (e.file == str(view) or e.file.startswith(f"{view}/")):
            e.file = label + e.file[len(str(view)):]
            e.args = (e.one_line(),)
        raise
