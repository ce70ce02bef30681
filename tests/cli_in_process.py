"""The woqconv CLI run inside the test's own process (typer's runner), returned as a CompletedProcess.

A ``python -m woqconv`` child costs about 2 s of interpreter start and torch import here, and about 5 s
when the command imports transformers (verify); dozens of CLI tests paid that for nothing they check.
The runner calls the same typer app as the console script, with stderr kept apart from stdout, so the
exit codes, the one-line errors and stdout are checked as before. An exception that escapes the app is
raised in the test instead of becoming a traceback on stderr, so the test fails either way.

Real processes stay where the process itself is under test: tests/test_bad_inputs.py runs one real
``python -m woqconv`` per kind of bad input, test_interruption.py sends signals, and test_hub.py needs
huggingface_hub to read its endpoint from the environment when it is first imported.
"""

from __future__ import annotations

import subprocess

from typer.testing import CliRunner

from woqconv.cli.app import app


def run_cli(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [str(a) for a in args]
    r = CliRunner().invoke(app, argv, env=env, prog_name="woqconv")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(["woqconv", *argv], r.exit_code, r.stdout, r.stderr)
