"""The one place where exceptions become a single line on stderr and an exit code."""

from __future__ import annotations

import difflib
import os
import sys
from contextlib import contextmanager

try:  # typer vendors click from 0.2x on; its errors are its own classes
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from ..errors import WoqconvError, as_options

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

# The API's argument names whose option is not ``--`` + the name with dashes.
OPTION_ALIASES = {
    "out": "--output",
    "zero_point_convention": "--zp-convention",
    "push_pattern": "--push-to-hub-pattern",
    "thresholds": "--threshold",
}


def error_line(e: WoqconvError) -> str:
    """The one line a known error prints, naming options as the command line spells them."""
    return f"woqconv: error: {as_options(e.one_line(), OPTION_ALIASES)}"


def usage_line(e: "click_errors.UsageError", args: list[str]) -> str:
    """A command-line usage error as one line: click's message, with a suggestion for a mistyped choice and a
    word on a value given to a switch."""
    message = e.format_message()
    choices = getattr(getattr(getattr(e, "param", None), "type", None), "choices", None)
    if isinstance(e, click_errors.BadParameter) and choices:
        choices = [getattr(c, "value", str(c)) for c in choices]
        wrong = _given_value(e, args)
        close = difflib.get_close_matches(wrong.lower().replace("_", "-"), choices, n=1, cutoff=0.6) if wrong else []
        if close:
            message += f" Did you mean {close[0]!r}?"
    elif message.startswith("Got unexpected extra argument") and e.ctx is not None:
        switches = {opt for p in e.ctx.command.params if getattr(p, "is_flag", False) for opt in p.opts}
        before = [a for a, b in zip(args, args[1:]) if a in switches and b in message]
        if before:
            message += f" ({before[0]} is a switch and takes no value)"
    if e.ctx is not None:
        message += f" (see: {e.ctx.command_path} --help)"
    return " ".join(message.split())


def _given_value(e: "click_errors.BadParameter", args: list[str]) -> str | None:
    """The value the user gave the option ``e`` is about, as typed."""
    opts = set(getattr(e.param, "opts", ()))
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if name in opts:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


@contextmanager
def mapped_errors():
    """Known errors print ``woqconv: error: <file>: <problem>`` and exit 2; bugs exit 3, no traceback
    unless WOQCONV_DEBUG=1 asks for one."""
    try:
        yield
    except WoqconvError as e:
        print(error_line(e), file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print("woqconv: interrupted; nothing was written to the output", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"woqconv: error: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except Exception as e:  # a bug in woqconv, not in the user's input
        if os.environ.get("WOQCONV_DEBUG"):
            raise
        print(f"woqconv: internal error: {type(e).__name__}: {e} (set WOQCONV_DEBUG=1 for a traceback)", file=sys.stderr)
        raise SystemExit(EXIT_INTERNAL) from None
