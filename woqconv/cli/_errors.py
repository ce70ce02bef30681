"""The one place where exceptions become a single line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from ..errors import WoqconvError

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


@contextmanager
def mapped_errors():
    """Known errors print ``woqconv: error: <file>: <problem>`` and exit 2; bugs exit 3, no traceback
    unless WOQCONV_DEBUG=1 asks for one."""
    try:
        yield
    except WoqconvError as e:
        print(f"woqconv: error: {e.one_line()}", file=sys.stderr)
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
