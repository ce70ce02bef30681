"""Hostile and broken checkpoints (issue 6, item 1): every command gives exit 2 and one line naming the
file and the problem, with no traceback, nothing written, and the input (bytes, modes, mtimes) untouched.

The corpus (tests/corpus.py) is built from the real fixtures into a temporary directory. Most cases run
the CLI in-process (typer's runner, stderr captured apart from stdout) for speed; a handful go through a
real ``python -m woqconv`` subprocess, exactly as a user runs it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fixture_path
from corpus import CASES, build, snapshot
from typer.testing import CliRunner

from woqconv.cli.app import app

TARGET = "gptq-v2"  # lossless from every fixture used by the corpus, so only the damage can refuse


def commands(src: Path, out: Path, good: Path) -> list[list[str]]:
    return [
        ["inspect", str(src)],
        # Two workers: the scan and the plan read layers in parallel threads, and must still fail on the
        # first bad layer in order, with the same one line (inspect and verify scan with one).
        ["convert", str(src), "-o", str(out), "--to", TARGET, "--workers", "2"],
        ["verify", str(src)],  # the damaged checkpoint as the output to check
        ["verify", str(good), "--against", str(src), "--format", "json"],  # ... and as the source
    ]


def check_one_line(code: int, stdout: str, stderr: str, named: Path, problem: str, args) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (args, code, stdout[-500:], stderr[-2000:])
    assert "Traceback" not in stderr and len(lines) == 1, (args, stderr)
    assert lines[0].startswith("woqconv: error: "), lines[0]
    assert str(named) in lines[0], (args, str(named), lines[0])
    assert problem in lines[0].lower(), (args, problem, lines[0])
    assert stdout == "", (args, stdout)


def no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if "woqconv" in p.name]
    assert not leftovers, leftovers


class _LoaderStarted(BaseException):
    """BaseException, so no error mapping can turn a started loader into a tidy exit 2."""


@pytest.fixture
def no_loader(monkeypatch):
    """verify must fail on bad input before it starts any loader process."""

    def refuse(*a, **k):
        raise _LoaderStarted(a)

    monkeypatch.setattr("woqconv.runtime.runs.subprocess.run", refuse)  # where verify starts loader processes


@pytest.fixture
def alarm():
    """A hang (e.g. opening a FIFO) fails the test instead of stalling the suite."""

    class Hung(BaseException):
        """Not an OSError (TimeoutError is one): the CLI's error mapping must not turn a hang into exit 2."""

    def timeout(*_):
        raise Hung("command hung")

    old = signal.signal(signal.SIGALRM, timeout)
    yield lambda s: signal.alarm(s)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_every_command(name, tmp_path, monkeypatch, no_loader, alarm):
    case = CASES[name]
    src, outside, named = build(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(src, outside)
    runner = CliRunner()
    for args in commands(src, tmp_path / "out", fixture_path(case.fixture)):
        alarm(60)
        r = runner.invoke(app, args)
        alarm(0)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        check_one_line(r.exit_code, r.stdout, r.stderr, named, case.problem, args)
    no_output(tmp_path)
    assert not (outside / "PWNED").exists(), "unpickling ran code"
    assert snapshot(src, outside) == before, "the input changed"


# One real process per line: each costs a Python start (~2 s here), the in-process runs cover the rest.
SUBPROCESS_CASES = [
    ("header length 2^63", "inspect"),
    ("pickle running code", "convert"),
    ("tokenizer symlinked out", "convert"),
    ("weights file is a FIFO", "verify"),
    ("zero-size quantized layer", "verify"),
]


@pytest.mark.parametrize("name,command", SUBPROCESS_CASES)
def test_bad_input_real_process(name, command, tmp_path):
    case = CASES[name]
    src, outside, named = build(case, tmp_path)
    before = snapshot(src, outside)
    args = next(a for a in commands(src, tmp_path / "out", fixture_path(case.fixture)) if a[0] == command)
    r = subprocess.run([sys.executable, "-m", "woqconv", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    check_one_line(r.returncode, r.stdout, r.stderr, named, case.problem, args)
    no_output(tmp_path)
    assert not (outside / "PWNED").exists(), "unpickling ran code"
    assert snapshot(src, outside) == before, "the input changed"


def test_a_refused_file_closes_its_descriptor_once(tmp_path):
    """A file refused while opening must not close its descriptor number again when collected: by then
    the number may belong to another open file (it did: "Bad file descriptor" mid-conversion)."""
    import gc

    from woqconv.errors import FormatError
    from woqconv.io.safetensors_io import SafetensorsFile

    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    try:
        SafetensorsFile(tmp_path / "bad.safetensors")
    except FormatError as e:
        kept = e.__traceback__  # holds the half-made object, as an error report or a debugger would
    with SafetensorsFile(fixture_path("ar-g32-asym-auto_gptq") / "model.safetensors") as good:
        del kept
        gc.collect()  # the refused file goes now, while `good` may hold its old descriptor number
        assert good.read("model.norm.weight").numel() == 128


def test_corpus_size():
    """The issue asks for the count; keep it from shrinking silently."""
    assert len(CASES) >= 97, len(CASES)


def test_hub_cache_snapshot_links_are_followed_but_only_into_its_blobs(tmp_path):
    """huggingface_hub stores a snapshot as links into the repo's blobs/: those are the checkpoint, a
    link anywhere else is not."""
    import shutil

    import woqconv

    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(fixture_path("ar-g32-sym-auto_gptq").iterdir()):
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    before = snapshot(repo)
    assert woqconv.inspect(snap).format == "gptq"
    woqconv.convert(snap, tmp_path / "out", to="awq")
    assert not any(p.is_symlink() for p in (tmp_path / "out").iterdir())
    assert snapshot(repo) == before
    (tmp_path / "elsewhere.json").write_text("{}")
    (snap / "extra.json").symlink_to(tmp_path / "elsewhere.json")
    r = CliRunner().invoke(app, ["inspect", str(snap)])
    assert r.exit_code == 2 and f"{snap / 'extra.json'}: is a symlink to" in r.stderr
