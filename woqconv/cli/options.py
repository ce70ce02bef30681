"""Options more than one command takes, typed once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from ..formats import TARGETS

# The targets the registry holds, in its order, as the choices of --to; any case ("AWQ") is read as the
# registered name. Commands take ``to.value``.
TargetName = Enum("TargetName", {name: name for name in TARGETS}, type=str)

TargetOpt = Annotated[
    TargetName,
    typer.Option("--to", case_sensitive=False, help="Target format.", show_default=False),
]
