"""CLI plumbing for Hub repos: the shared Hub options and ``woqconv migrate`` (the chain itself is woqconv.pipeline).

Kept apart from app.py so the commands there change by a few lines only.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..hub import inspect_remote, is_repo_id
from . import render
from .options import TargetOpt
from ._errors import mapped_errors

__all__ = ["inspect_remote", "is_repo_id"]

RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Hub source only: branch, tag or commit sha to read (default: the default branch).", show_default=False)
]
PushOpt = Annotated[
    Optional[str], typer.Option("--push-to-hub", help="Upload OUTPUT to this Hub repo (created if missing) with a generated model card.", show_default=False)
]
PrivateOpt = Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repo private.")]
PushRevisionOpt = Annotated[
    Optional[str], typer.Option("--push-revision", help="With --push-to-hub: commit to this branch (created if missing).", show_default=False)
]
BaseModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--base-model",
        help="The original unquantized model (a directory or a Hub repo id), as INC's original_model: a checkpoint that records "
        "no architecture (INC's default format) takes config.json, generation_config.json and the tokenizer from it, never weights.",
        show_default=False,
    ),
]
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="With --push-to-hub: open a pull request instead of committing to the branch.")]


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
    allow_bf16: Annotated[bool, typer.Option("--allow-bf16", help="hpu only: accept bf16 scales (reported per layer).")] = False,
    requantize: Annotated[
        bool, typer.Option("--requantize", help="Refit layers no lossless path reaches (error search; each layer's error is reported).")
    ] = False,
    base_model: BaseModelOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip woqconv verify (not recommended before a push).")] = False,
    no_run: Annotated[bool, typer.Option("--no-run", help="Verify structure and weights only; load nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-repo progress lines.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Convert (then verify, then optionally publish) every repo in LIST_FILE; rerun to resume.

    Finished repos are skipped on a rerun. The final table says what succeeded, what was refused and
    why, and what failed. Exit 0 when every repo succeeded, 1 otherwise, 2 on bad input.
    Example: woqconv migrate repos.txt --to hpu --allow-bf16 -o ./migrated --push-to-hub-pattern 'me/{name}-{target}'
    """
    from ..migrate import migrate as run_migration

    if fmt not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    err = Console(stderr=True)
    progress = None if quiet or fmt == "json" else (lambda e: err.print(render.migration_line(e)))
    with mapped_errors():
        report = run_migration(
            list_file, output, to=to.value, push_pattern=push_pattern, private=private, verify=not no_verify, run=not no_run,
            allow_bf16=allow_bf16, requantize="search" if requantize else None, base_model=base_model, command=exact_command(),
            quiet=quiet or fmt == "json", on_entry=progress,
        )
    if fmt == "json":
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        render.migration_report(Console(), report)
    raise typer.Exit(0 if report.succeeded else 1)
