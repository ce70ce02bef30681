"""The one place a command's result reaches stdout: one JSON object, or rich tables."""

from __future__ import annotations

import json
import sys
from typing import Callable

from rich.console import Console

from .options import OutputFormat


def emit(fmt: OutputFormat, data: dict, render_text: Callable[[Console], None]) -> None:
    """``data`` as one sorted, indented JSON object (``--format json``), else ``render_text(console)``."""
    if fmt is OutputFormat.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render_text(console())


# A pipe or a log gets whole lines: tables as wide as their content, so no name is broken over two lines
# and grep finds every one.
PIPE_WIDTH = 1000


def console(stderr: bool = False) -> Console:
    """A rich console for stdout (or stderr): the terminal's width on a terminal, unwrapped lines elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)
