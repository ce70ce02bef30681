"""The errors woqconv raises on purpose. The CLI maps each to one line and an exit code."""

from __future__ import annotations

import os


class WoqconvError(Exception):
    """A problem with the user's input or request: reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, *, file: str | os.PathLike | None = None, tensor: str | None = None):
        self.problem = problem
        self.file = os.fspath(file) if file is not None else None
        self.tensor = tensor
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.tensor:
            where.append(f"tensor {self.tensor}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.problem}" if prefix else self.problem


class FormatError(WoqconvError):
    """The checkpoint is malformed, unknown, or disagrees with itself."""


class RefusedConversion(WoqconvError):
    """The conversion cannot be done losslessly (or at all) and the user did not ask for a lossy one."""


class OutputError(WoqconvError):
    """The output location is unusable (exists, overlaps the input, cannot be written)."""
