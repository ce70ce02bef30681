"""Commands: ``woqconv inspect``, ``woqconv convert``. Every command has ``--format json``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .. import __version__
from .. import pipeline
from ..inspection import inspect as inspect_checkpoint
from . import hub_commands, render
from ._noise import third_party_output_held
from ._errors import EXIT_BAD_INPUT, click_errors, mapped_errors, usage_line
from .options import (
    AllowBf16Opt,
    BaseModelOpt,
    ConventionOpt,
    DtypeOpt,
    CreatePrOpt,
    FormatOpt,
    OutputFormat,
    PrivateOpt,
    PushOpt,
    PushRevisionOpt,
    QuietOpt,
    RequantMethod,
    RevisionOpt,
    TargetOpt,
    WorkersOpt,
    ZeroPointConvention,
)
from .output import console, emit
from .progress import ByteProgress, Steps

app = typer.Typer(
    name="woqconv",
    help="Move 4-bit weight-only-quantized checkpoints between formats without losing a bit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"woqconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show third-party warnings as they come (any command; otherwise they are "
                                          "shown only when it fails).")] = False,
) -> None:
    """woqconv: inspect and convert GPTQ (v1, v2), AWQ GEMM and AutoRound checkpoints."""


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="Checkpoint directory, or a Hub repo id (org/name: headers only, no weights downloaded).", show_default=False)],
    layers: Annotated[bool, typer.Option("--layers", help="Also print the per-layer table.")] = False,
    fmt: FormatOpt = OutputFormat.text,
    zp_convention: ConventionOpt = ZeroPointConvention.auto,
    revision: RevisionOpt = None,
    base_model: BaseModelOpt = None,
    fixes: Annotated[bool, typer.Option("--fixes/--no-fixes", help="For each engine that cannot load the checkpoint, plan the --to that fixes it "
                                        "(--no-fixes: verdicts only, from the scan; no torch).")] = True,
) -> None:
    """Describe a quantized checkpoint: format, bits, groups, zero-point convention found, g_idx, warnings.

    Example: woqconv inspect ./Llama-2-7B-GPTQ --layers
    Example: woqconv inspect TheBloke/Llama-2-7B-GPTQ
    """
    with mapped_errors():
        if hub_commands.is_repo_id(path):
            report = hub_commands.inspect_remote(path, revision=revision, quiet=fmt is OutputFormat.json)
        else:
            report = inspect_checkpoint(path, zero_point_convention=zp_convention.value, base_model=base_model, fixes=fixes)
    emit(fmt, report.to_dict(), lambda console: render.inspect_report(console, report, layers=layers))


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Source checkpoint directory, or a Hub repo id (org/name).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Output directory (written atomically).", show_default=False)],
    to: TargetOpt,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and check everything, write nothing.")] = False,
    allow_bf16: AllowBf16Opt = False,
    requantize: Annotated[
        bool,
        typer.Option("--requantize", help="Refit layers no lossless path reaches (NF4 <-> uint4, scattered act-order for targets "
                     "without g_idx): data-free error search per group; each layer's error is reported (--dry-run: before writing)."),
    ] = False,
    requant_method: Annotated[
        RequantMethod, typer.Option("--requant-method", case_sensitive=False, help="search (minimise the weight error, never worse than min-max) or minmax (plain rounding, for comparison).")
    ] = RequantMethod.search,
    double_quant: Annotated[
        bool, typer.Option("--double-quant", help="nf4/fp4 only: store absmax double-quantized as bitsandbytes can (smaller, lossy, reported).")
    ] = False,
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
    then_verify: Annotated[bool, typer.Option("--verify", help="Run woqconv verify OUT --against SRC after converting.")] = False,
    workers: WorkersOpt = None,
    fmt: FormatOpt = OutputFormat.text,
    zp_convention: ConventionOpt = ZeroPointConvention.auto,
    base_model: BaseModelOpt = None,
    revision: RevisionOpt = None,
    push_to_hub: PushOpt = None,
    private: PrivateOpt = False,
    push_revision: PushRevisionOpt = None,
    create_pr: CreatePrOpt = False,
) -> None:
    """Convert SRC into format TO at OUTPUT, losslessly or not at all.

    Example: woqconv convert ./Llama-2-7B-GPTQ -o ./Llama-2-7B-AWQ --to awq
    Example: woqconv convert TheBloke/Llama-2-7B-GPTQ -o ./llama-hpu --to hpu --allow-bf16 --verify --push-to-hub me/Llama-2-7B-Gaudi
    """
    quiet_all = quiet or fmt is OutputFormat.json
    show_progress = not quiet_all and not dry_run
    errors = console(stderr=True)
    # Only on a terminal: elsewhere rich cannot redraw the bar, and a transient one leaves an empty line.
    bar = ByteProgress(errors) if show_progress and errors.is_terminal else None
    # Steps only for a job of several (convert, then verify or push): the byte bar is a conversion's progress.
    with mapped_errors(), Steps(errors, "convert", quiet=quiet_all or not (then_verify or push_to_hub)) as steps:
        try:
            outcome = pipeline.run(
                src, output, to=to.value, verify=then_verify, push_to_hub=push_to_hub, private=private, push_revision=push_revision,
                create_pr=create_pr, revision=revision, command=hub_commands.exact_command(), quiet=quiet_all, base_model=base_model,
                workers=workers, overwrite=overwrite, dry_run=dry_run, allow_bf16=allow_bf16,
                requantize=requant_method.value if requantize else None, double_quant=double_quant,
                dtype=dtype.value if dtype else None, zero_point_convention=zp_convention.value, progress=bar.update if bar else None, step=steps,
            )
        finally:
            if bar:
                bar.stop()
    report, checked, pushed = outcome.report, outcome.checked, outcome.pushed
    data = report.to_dict()
    if checked is not None:
        data["verify"] = checked.to_dict()
    if pushed is not None:
        data["push"] = pushed.to_dict()

    def text(console: Console) -> None:
        render.convert_report(console, report)
        if checked is not None:
            render.verify_report(console, checked)
        if pushed is not None:
            render.push_report(console, pushed)
        elif push_to_hub and checked is not None and not checked.passed:
            errors.print(f"not pushed to {push_to_hub}: verify failed")

    emit(fmt, data, text)
    if checked is not None and not checked.passed:
        raise typer.Exit(1)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Converted checkpoint directory.", show_default=False)],
    against: Annotated[Optional[Path], typer.Option("--against", help="The source it was converted from.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (hpu, else cuda, else cpu), hpu, cuda or cpu.")] = "auto",
    no_run: Annotated[bool, typer.Option("--no-run", help="Structure and weights only; load nothing.")] = False,
    threshold: Annotated[
        Optional[list[str]],
        typer.Option("--threshold", help="Override a pass limit, NAME=VALUE (e.g. max_abs_logit=2e-3); names as in the README table."),
    ] = None,
    workers: WorkersOpt = None,
    fmt: FormatOpt = OutputFormat.text,
    base_model: BaseModelOpt = None,
    quiet: QuietOpt = False,
    loader: Annotated[
        Optional[str],
        typer.Option("--loader", help="Run OUT in this loader instead of its format's own: vllm (compressed-tensors, AWQ, GPTQ), "
                     "transformers, gptqmodel, inc, inc-default, inc-hpu, inc-hpu-default, dense.", show_default=False),
    ] = None,
) -> None:
    """Check OUT: structure, weights against --against SRC, and a run with its real loader.

    Exit 0 when every check passes, 1 when one fails (the layer and check are named), 2 on bad input.
    Example: woqconv verify ./Llama-2-7B-AWQ --against ./Llama-2-7B-GPTQ
    """
    from ..runtime.verify import parse_thresholds
    from ..runtime.verify import verify as verify_checkpoint

    with mapped_errors(), Steps(console(stderr=True), "verify", quiet=quiet or fmt is OutputFormat.json) as steps:
        report = verify_checkpoint(path, against=against, device=device, run=not no_run, thresholds=parse_thresholds(threshold or []),
                                   workers=workers, base_model=base_model, step=steps, loader=loader.lower() if loader else None)
    emit(fmt, report.to_dict(), lambda console: render.verify_report(console, report))
    raise typer.Exit(0 if report.passed else 1)


app.command()(hub_commands.migrate)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; a mistake in its use (an unknown option, a bad value, a missing argument) is one
    line on stderr and exit 2, with the nearest valid spelling where one is close."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --verbose is the whole command line's, wherever it is written: third-party warnings as they come.
    verbose = bool(os.environ.get("WOQCONV_VERBOSE")) or "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    try:
        with third_party_output_held(verbose):
            code = app(args=args, prog_name="woqconv", standalone_mode=False)
            if code:  # typer.Exit(1) returns here; as an exit inside the block, it shows what was held
                raise SystemExit(code)
    except click_errors.NoArgsIsHelpError as e:
        print(e.ctx.get_help())
        code = EXIT_BAD_INPUT
    except click_errors.UsageError as e:
        print(f"woqconv: error: {usage_line(e, args)}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except typer.Abort:
        print("woqconv: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
