"""The errors woqconv raises on purpose. The CLI maps each to one line and an exit code.

Messages name the Python API's arguments in backticks (`` `overwrite=True` ``, `` `to=nf4` ``,
`` `base_model=PATH_OR_REPO` ``): ``str(error)`` keeps that wording for API users, and the CLI renders
each one as its option (``--overwrite``, ``--to nf4``, ``--base-model PATH_OR_REPO``).
"""

from __future__ import annotations

import os
import re


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


class BadArgument(WoqconvError, ValueError):
    """An argument no call accepts: an unknown target, a value out of range, options that do not go together.
    A ValueError for API users; one line and exit 2 on the command line."""


def check_workers(workers: object) -> None:
    """``workers``, a count of threads: a whole number of at least 1."""
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"workers must be a whole number, not {type(workers).__name__} {workers!r}")
    if workers < 1:
        raise BadArgument(f"`workers` must be at least 1, not {workers}")


# `name=value` in a message: an API argument, which the CLI names as its option.
_ARGUMENT = re.compile(r"`([a-z_][a-z0-9_]*)(?:=([^`]*))?`")


def as_options(message: str, aliases: dict[str, str]) -> str:
    """``message`` with every `` `name=value` `` written as the CLI's ``--name value`` (``aliases``: API name ->
    option where they differ; ``=True`` is a bare switch)."""

    def option(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = aliases.get(name, "--" + name.replace("_", "-"))
        return flag if value in (None, "True") else f"{flag} {value}"

    return _ARGUMENT.sub(option, message)


class FormatError(WoqconvError):
    """The checkpoint is malformed, unknown, or disagrees with itself."""


class RefusedConversion(WoqconvError):
    """The conversion cannot be done losslessly (or at all) and the user did not ask for a lossy one."""


class OutputError(WoqconvError):
    """The output location is unusable (exists, overlaps the input, cannot be written)."""
