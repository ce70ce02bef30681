"""What a person waiting sees: a byte bar for conversions, the current step for verify.

On a terminal both are live and vanish when done. In a log (a pipe, a CI job) a bar cannot be redrawn,
so conversions print nothing there, and a verify step that is still running after ``LOG_AFTER`` seconds
gets one plain line on stderr: a log shows where the time goes, and a quick command (or one that stops at
bad input, whose error stays one line) prints nothing else.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn


class ByteProgress:
    """A byte progress bar that appears once writing starts (the plan is checked by then), so a refusal prints
    nothing else; its elapsed time moves while a step with no bytes to count runs (OpenVINO's export)."""

    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._task = None

    def update(self, done: int, total: int) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("convert", total=total)
        self._progress.update(self._task, completed=done)

    def stop(self) -> None:
        if self._task is not None:
            self._progress.stop()


LOG_AFTER = 2.0  # seconds a step runs before a log gets its line


class Steps:
    """``steps(what)`` shows the step that starts: a spinner with it on a terminal, a line elsewhere once the
    step has taken ``LOG_AFTER`` seconds."""

    def __init__(self, console: Console, command: str, *, quiet: bool = False):
        self._console, self._command, self._quiet = console, command, quiet
        self._status = None
        self._pending: threading.Timer | None = None
        self._start = time.perf_counter()

    def _line(self, what: str, started: float) -> None:
        self._console.print(f"woqconv {self._command}: {what} (from {started:.1f} s)", highlight=False, markup=False, soft_wrap=True)

    def __call__(self, what: str) -> None:
        if self._quiet:
            return
        if not self._console.is_terminal:
            self._cancel()
            self._pending = threading.Timer(LOG_AFTER, self._line, (what, time.perf_counter() - self._start))
            self._pending.daemon = True
            self._pending.start()
        elif self._status is None:
            self._status = self._console.status(f"{self._command}: {what}")
            self._status.start()
        else:
            self._status.update(f"{self._command}: {what}")

    def __enter__(self) -> "Steps":
        return self

    def _cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def __exit__(self, *exc) -> None:
        self._cancel()
        if self._status is not None:
            self._status.stop()
