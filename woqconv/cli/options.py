"""Every option more than one command takes, typed once: each command names these, never re-declares them."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from ..formats import TARGETS
from ..requant import METHODS as REQUANT_METHODS
from ..formats.zero_points import CONVENTION_CHOICES

# The targets the registry holds, in its order, as the choices of --to; any case ("AWQ") is read as the
# registered name. Commands take ``to.value``.
TargetName = Enum("TargetName", {name: name for name in TARGETS}, type=str)

TargetOpt = Annotated[
    TargetName,
    typer.Option("--to", case_sensitive=False, help="Target format.", show_default=False),
]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option("--format", case_sensitive=False, help="text (rich tables) or json (one object on stdout).")]

ZeroPointConvention = Enum("ZeroPointConvention", {c: c for c in CONVENTION_CHOICES}, type=str)
ConventionOpt = Annotated[
    ZeroPointConvention,
    typer.Option(
        "--zp-convention",
        case_sensitive=False,
        help="How to read GPTQ zero points: auto (the data decides where it can, else the config), v1 (stored z-1), v2 (stored z), "
        "v1-word (GPTQModel's word arithmetic).",
    ),
]
def _at_least_one(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise typer.BadParameter(f"{n} threads: give at least 1")
    return n


RequantMethod = Enum("RequantMethod", {m: m for m in REQUANT_METHODS}, type=str)
# The weights dtypes a target that takes one offers (the dense target's).
WeightsDtype = Enum("WeightsDtype", {d: d for d in dict.fromkeys(d for t in TARGETS.values() for d in t.dtype_choices)}, type=str)
DtypeOpt = Annotated[
    Optional[WeightsDtype],
    typer.Option("--dtype", case_sensitive=False, show_default=False,
                 help="--to dense only: the weights' dtype. float32 (the default) holds the dequantized weights exactly; "
                      "float16 and bfloat16 round them, and the rounding is reported per layer."),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", callback=lambda n: _at_least_one(n), show_default=False, metavar="N",
                 help="Layers handled in parallel threads (memory: one layer each). Default: one per core, at most 4."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
AllowBf16Opt = Annotated[
    bool, typer.Option("--allow-bf16", help="hpu only: accept casting fp16/fp32 scales and unquantized tensors to bf16 (reported per layer).")
]

# -- Hub sources and destinations -----------------------------------------------------------------
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
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="With --push-to-hub: open a pull request instead of committing to the branch.")]
BaseModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--base-model",
        help="The original unquantized model (a directory or a Hub repo id), as INC's original_model: a checkpoint that records "
        "no architecture (INC's default format) takes config.json, generation_config.json and the tokenizer from it, never weights.",
        show_default=False,
    ),
]
