"""CLI plumbing for Hub repos: ``woqconv migrate``, the command line a model card records, and remote inspect's
names (the chain itself is woqconv.pipeline; the Hub options are in options.py with the others)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..hub import inspect_remote as _inspect_remote, is_repo_id
from ..inspection import inspect as inspect_local
from . import render
from ._errors import mapped_errors
from .options import AllowBf16Opt, BaseModelOpt, FormatOpt, OutputFormat, PrivateOpt, QuietOpt, TargetOpt
from .output import console, emit
from .progress import Steps

__all__ = ["inspect_remote", "is_repo_id"]


def inspect_remote(repo_id: str, **kw):
    """Remote inspect; a cached snapshot is inspected in full by woqconv.inspect (with the fixes it plans)."""
    return _inspect_remote(repo_id, inspect_local=inspect_local, **kw)

def exact_command() -> str:
    """The command line as typed, for the model card."""
    return shlex.join(["woqconv", *sys.argv[1:]])


def migrate(
    list_file: Annotated[Path, typer.Argument(help="A file of Hub repo ids, one per line (org/name or org/name@revision; # comments).", show_default=False)],
    to: TargetOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Root directory: one output per repo, and the resumable state file.")] = Path("woqconv-migrated"),
    push_pattern: Annotated[
        Optional[str], typer.Option("--push-to-hub-pattern", help="Publish each output to this repo name; {org}, {name}, {target} are filled in, e.g. 'me/{name}-{target}'.", show_default=False)
    ] = None,
    private: PrivateOpt = False,
    allow_bf16: AllowBf16Opt = False,
    requantize: Annotated[
        bool, typer.Option("--requantize", help="Refit layers no lossless path reaches (error search; each layer's error is reported).")
    ] = False,
    base_model: BaseModelOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip woqconv verify (not recommended before a push).")] = False,
    no_run: Annotated[bool, typer.Option("--no-run", help="Verify structure and weights only; load nothing.")] = False,
    quiet: QuietOpt = False,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Convert (then verify, then optionally publish) every repo in LIST_FILE; rerun to resume.

    Finished repos are skipped on a rerun. The final table says what succeeded, what was refused and
    why, and what failed. Exit 0 when every repo succeeded, 1 otherwise, 2 on bad input.
    Example: woqconv migrate repos.txt --to hpu --allow-bf16 -o ./migrated --push-to-hub-pattern 'me/{name}-{target}'
    """
    from ..migrate import migrate as run_migration

    err = console(stderr=True)
    silent = quiet or fmt is OutputFormat.json
    progress = None if silent else (lambda e: err.print(render.migration_line(e)))
    with mapped_errors(), Steps(err, "migrate", quiet=silent) as steps:
        report = run_migration(
            list_file, output, to=to.value, push_pattern=push_pattern, private=private, verify=not no_verify, run=not no_run,
            allow_bf16=allow_bf16, requantize="search" if requantize else None, base_model=base_model, command=exact_command(),
            quiet=silent, on_entry=progress, step=lambda repo, what: steps(f"{repo}: {what}"),
        )
    emit(fmt, report.to_dict(), lambda console: render.migration_report(console, report))
    raise typer.Exit(0 if report.succeeded else 1)
