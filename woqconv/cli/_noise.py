"""Third-party chatter held back on success: shown when the command fails, or always with ``--verbose``.

Importing transformers pulls in torchao, which logs a warning for each CUDA kernel library it cannot load on
a CPU machine, and torch logs deprecation notices from ``torch.utils._pytree``; Python warnings come from
many peers. None of it is about the user's checkpoint. The loaders ``verify`` runs live in subprocesses,
whose output ``runtime/runs.py`` keeps for the failure it explains.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

# Loggers whose records are held: they propagate nowhere while the command runs.
HELD_LOGGERS = ("torchao", "torch.utils._pytree", "py.warnings")


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def third_party_output_held(verbose: bool) -> Iterator[None]:
    """Hold third-party warnings for the block; print them to stderr if it fails (a failed check, exit 1; a bug,
    exit 3; an exception), or as they come with ``verbose``. Bad input (exit 2) keeps its one line: what was
    held says nothing about the user's mistake."""
    if verbose:
        yield
        return
    held = _Held()
    loggers = [logging.getLogger(name) for name in HELD_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [held]
        lg.propagate = False
    logging.captureWarnings(True)
    ok = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
        ok = True
    except SystemExit as e:
        ok = e.code in (0, None, 2)
        raise
    finally:
        logging.captureWarnings(False)
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
        if not ok and held.lines:
            print("woqconv: third-party messages held back during the command:", file=sys.stderr)
            for line in held.lines:
                print(f"  {line}", file=sys.stderr)
