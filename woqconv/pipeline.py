"""One pipeline for the Python API, ``woqconv convert`` and ``woqconv migrate``:
source (a directory or a Hub repo id) -> convert -> verify -> model card -> push.

The steps themselves live in their packages (``convert``, ``runtime.verify``, ``hub``); this module only
chains them, so that a Hub source, a verification and a push behave the same whichever door they came in by.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .convert import ConvertReport
from .convert import convert as convert_directory
from .errors import BadArgument, OutputError
from .io.output import output_path

if TYPE_CHECKING:
    from .hub import HubSource, PushReport
    from .runtime.verify import VerifyReport


@dataclass
class Outcome:
    """What one run of the pipeline did: the conversion, and the verification and push when asked."""

    report: ConvertReport
    checked: "VerifyReport | None" = None
    pushed: "PushReport | None" = None
    source_commit: str | None = None  # the Hub commit a repo id resolved to; None for a directory


@contextmanager
def source(src: str | os.PathLike, *, revision: str | None = None, token: str | None = None,
           quiet: bool = True, step: Callable[[str], None] | None = None) -> Iterator[tuple[Path, "HubSource | None"]]:
    """SRC as a local directory: itself, or the selected files of a Hub repo's snapshot (an existing local
    path always wins over a repo id)."""
    # huggingface_hub is imported with the hub package: only for a repo id or a push
    from .hub_access import is_repo_id

    if not is_repo_id(src):
        if revision:
            raise OutputError(f"`revision` applies to a Hub repo id; {src} is a local path")
        yield Path(src), None
        return
    from .hub import hub_checkout

    if step:
        step(f"fetching {src} from the Hub")
    with hub_checkout(os.fspath(src), revision=revision, token=token, quiet=quiet) as hub_src:
        yield hub_src.path, hub_src


def run(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    verify: bool = False,
    run_loaders: bool = True,
    push_to_hub: str | None = None,
    private: bool = False,
    push_revision: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    token: str | None = None,
    command: str = "",
    quiet: bool = True,
    base_model: str | os.PathLike | None = None,
    workers: int | None = None,
    step: Callable[[str], None] | None = None,
    **options,
) -> Outcome:
    """Convert ``src`` into ``to`` at ``out``; then, when asked, verify it against the source (``verify``;
    ``run_loaders=False`` checks structure and weights only) and publish it with a model card
    (``push_to_hub``), only when verification passed; ``step(what)`` is told each step as it starts (fetch,
    convert, each of verify's, push).
    ``options`` are :func:`woqconv.convert.convert`'s.
    A Hub source is named ``org/name@sha`` in every report."""
    if (push_revision or create_pr) and not push_to_hub:
        raise BadArgument("`push_revision` and `create_pr` go with `push_to_hub`")
    if push_revision and create_pr:
        raise BadArgument("choose `push_revision=BRANCH` or `create_pr=True`, not both")
    if private and not push_to_hub:
        raise BadArgument("`private` goes with `push_to_hub`: it makes the repo it creates private")
    out = output_path(out)
    dry_run = bool(options.get("dry_run"))
    step = step or (lambda what: None)
    with source(src, revision=revision, token=token, quiet=quiet, step=step) as (local, hub_src):
        if verify and run_loaders and not dry_run:
            from .runtime.runs import warm_up

            warm_up()  # the loaders' worker imports torch and transformers while the conversion writes
        step(f"converting to {to}")
        report = convert_directory(local, out, to=to, base_model=base_model, workers=workers, **options)
        checked = None
        if verify and not dry_run:
            # runtime.verify brings torch and the loaders: imported only when asked to verify
            from .runtime.verify import verify as verify_checkpoint

            checked = verify_checkpoint(out, against=local, base_model=base_model, run=run_loaders, workers=workers, step=step)
        if hub_src is not None:
            hub_src.relabel(report)
            if checked is not None:
                hub_src.relabel(checked)
        pushed = None
        if push_to_hub and (checked is None or checked.passed):
            step(f"pushing to {push_to_hub}")
            pushed = _publish(out, push_to_hub, report=report, checked=checked, source_label=hub_src.repo_id if hub_src else str(src),
                              source_commit=hub_src.commit if hub_src else None, private=private, push_revision=push_revision,
                              create_pr=create_pr, dry_run=dry_run, token=token, quiet=quiet, command=command)
        return Outcome(report, checked, pushed, hub_src.commit if hub_src else None)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, to: str, revision: str | None = None, token: str | None = None,
            **options) -> ConvertReport:
    """Convert the checkpoint at ``src``, a directory or a Hub repo id (``org/name``, at ``revision``), into
    format ``to`` at ``out``. See :func:`woqconv.convert.convert` for the options.

    Example::

        report = woqconv.convert("TheBloke/Llama-2-7B-GPTQ", "llama-awq", to="awq")
        assert report.lossless
    """
    return run(src, out, to=to, revision=revision, token=token, **options).report


def _publish(output: Path, repo_id: str, *, report: ConvertReport, checked, source_label: str, source_commit: str | None, private: bool,
             push_revision: str | None, create_pr: bool, dry_run: bool, token: str | None, quiet: bool, command: str) -> "PushReport":
    from . import __version__
    from .hub import CardFacts, push, render_card

    card = render_card(CardFacts(
        repo_id=repo_id, source=source_label, source_commit=source_commit, convert=report.to_dict(),
        verify=checked.to_dict() if checked is not None else None, version=__version__, command=command,
    ))
    pushed = push(output, repo_id, card=card, private=private, revision=push_revision, create_pr=create_pr, dry_run=dry_run, token=token,
                  quiet=quiet, commit_message=f"woqconv: {report.source} ({report.source_format}) -> {report.target}")
    if dry_run:
        # Nothing was written: list what the conversion would put in OUT.
        pushed.files = sorted(set(report.files_copied) | set(report.files_rewritten) | {"README.md"}) + ["(the weight files the conversion writes)"]
    return pushed
