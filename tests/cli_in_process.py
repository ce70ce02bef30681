"""The woqconv CLI run inside the test's own process (typer's runner), returned as a CompletedProcess.

A ``python -m woqconv`` child costs about 2 s of interpreter start and torch import here, and about 5 s
when the command imports transformers (verify); dozens of CLI tests paid that for nothing they check.
The runner calls the console script's own ``main`` (usage errors as one line, third-party output held)
with typer's stream isolation, stderr kept apart from stdout, so the exit codes, the one-line errors and
stdout are what a user sees. An exception that escapes ``main`` is raised in the test instead of becoming
a traceback on stderr, so the test fails either way.

Real processes stay where the process itself is under test: tests/test_bad_inputs.py runs one real
``python -m woqconv`` per kind of bad input, test_interruption.py sends signals, and test_hub.py needs
huggingface_hub to read its endpoint from the environment when it is first imported.
"""

from __future__ import annotations

import subprocess

from typer.testing import CliRunner

from woqconv.cli.app import main


def run_cli(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [str(a) for a in args]
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            import sys

            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    return subprocess.CompletedProcess(["woqconv", *argv], code, out, err)
