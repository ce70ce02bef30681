"""The one place a command's result reaches stdout: one JSON object, or rich tables."""

from __future__ import annotations

import json
from typing import Callable

from rich.console import Console

from .options import OutputFormat


def emit(fmt: OutputFormat, data: dict, render_text: Callable[[Console], None]) -> None:
    """``data`` as one sorted, indented JSON object (``--format json``), else ``render_text(console)``."""
    if fmt is OutputFormat.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render_text(Console())
