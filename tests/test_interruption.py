"""Interruption and full disks (issue 6, item 2): a conversion killed with SIGKILL at random moments of
its write phase leaves no OUT, at most its hidden partial directory, and the next run removes and names
that leftover and writes byte-identical output. A full disk gives one line and no OUT.

The kills must land while files are being written, so the source is a real-shaped synthetic GPTQ
checkpoint (benchmarks/synth.py's tensors at a small shape, ~40 MB) and each kill waits for the
partial directory to appear, then sleeps a random fraction of the measured write time. Runs start from
a forkserver that has already imported woqconv, so 20 kills cost seconds, not 20 interpreter starts;
a few kills go to a real ``python -m woqconv`` process too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fixture_path
from corpus import snapshot

import woqconv
from woqconv.io.output import partial_dir_for, replaced_dir_for
from woqconv.io.safetensors_io import SafetensorsWriter, TensorSpec

sys.path.insert(0, str(ROOT / "benchmarks"))
import synth  # noqa: E402

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

# Big enough that the write phase outlasts a process start even with the packed-word re-layout
# (about 40 MB; at 2 MB the whole write took under 10 ms).
SHAPE = dict(hidden=1024, intermediate=2816, layers=4, heads=8, kv_heads=8, vocab=4096)
TARGET = "awq"  # random v1 zero points include z = 0, which only a raw-zero target can hold
KILLS = 20


def make_synthetic(out: Path) -> None:
    """synth.py's checkpoint at SHAPE (its main() knows only the 1B/7B shapes)."""
    out.mkdir()
    specs = [TensorSpec(n, d, s) for n, d, s in synth.tensors_of(SHAPE)]
    g = torch.Generator().manual_seed(0)
    w = SafetensorsWriter(out / "model.safetensors", specs, {"format": "pt"})
    for s in specs:
        w.write(s.name, synth.make(s.name, s.dtype, s.shape, g))
    w.close()
    h = SHAPE["hidden"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": SHAPE["intermediate"],
        "num_hidden_layers": SHAPE["layers"], "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"],
        "vocab_size": SHAPE["vocab"], "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": synth.GROUP, "desc_act": False, "sym": False, "checkpoint_format": "gptq"},
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer_config.json").write_text("{}")


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _convert(src: str, out: str) -> None:
    woqconv.convert(src, out, to=TARGET)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupt")
    src = base / "src"
    make_synthetic(src)
    ref = base / "reference"
    woqconv.convert(src, ref, to=TARGET)
    return src, digest(ref)


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["woqconv.convert", "torch"])
    return ctx


def start_and_wait_for_partial(ctx, src: Path, out: Path):
    """Start a conversion; return (process, time the partial directory appeared) or (process, None)."""
    proc = ctx.Process(target=_convert, args=(str(src), str(out)))
    proc.start()
    partial = partial_dir_for(out)
    deadline = time.monotonic() + 120
    while not partial.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            return proc, None
        time.sleep(0.0005)
    return proc, time.monotonic()


def test_sigkill_during_the_write_phase_leaves_no_output(synthetic, forkserver, tmp_path):
    src, reference = synthetic
    before = snapshot(src)
    out = tmp_path / "out"
    # The write phase, timed the way the kills will see it: from the partial directory to the exit. The
    # shortest of 3 runs, so that a kill at 90% of it lands before a quick run finishes (with the first
    # run's time alone, 2 of 20 kills once came too late).
    times = []
    for _ in range(3):
        proc, t0 = start_and_wait_for_partial(forkserver, src, out)
        while not out.exists() and proc.is_alive():  # the commit (rename into place) ends the write phase
            time.sleep(0.0005)
        times.append(time.monotonic() - t0)
        proc.join()
        assert proc.exitcode == 0 and digest(out) == reference
        shutil.rmtree(out)
    write_time = min(times)

    rng = random.Random(6)
    landed, partial_bytes = 0, []
    # Spare attempts: a run quicker than the timed ones (the load on the cores varies) finishes first.
    for attempt in range(KILLS * 4):
        if landed == KILLS:
            break
        # Stratified random moments over the first 90% of the write phase.
        delay = write_time * 0.9 * (landed + rng.random()) / KILLS
        proc, t0 = start_and_wait_for_partial(forkserver, src, out)
        assert t0 is not None, f"conversion ended before writing (exit {proc.exitcode})"
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        proc.kill()
        proc.join()
        # Finished first (this run was quicker than the timed one), or killed after the commit while
        # exiting: not a kill during the write. Atomic means OUT, if it exists, is the whole output.
        if proc.exitcode == 0 or out.exists():
            assert digest(out) == reference, f"OUT exists after a kill at {delay:.3f} s but is not complete"
            shutil.rmtree(out)
            continue
        assert proc.exitcode == -signal.SIGKILL
        landed += 1
        assert [p.name for p in tmp_path.iterdir()] == [partial_dir_for(out).name]
        # Allocated, not apparent, size: the writer sizes each file up front (sparse) and fills it in.
        partial_bytes.append(sum(p.stat().st_blocks * 512 for p in partial_dir_for(out).rglob("*") if p.is_file()))
        # The next run names the leftover, cleans it and writes exactly the uninterrupted output.
        report = woqconv.convert(src, out, to=TARGET)
        assert any(partial_dir_for(out).name in w and "interrupted" in w for w in report.warnings), report.warnings
        assert digest(out) == reference, f"rerun after a kill at {delay:.3f} s differs"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
        shutil.rmtree(out)
    assert landed == KILLS, f"only {landed} kills landed before the conversion finished"
    # The kills were spread over the write: some before any tensor data, some deep into it.
    assert min(partial_bytes) < max(partial_bytes)
    assert snapshot(src) == before
    print(f"\n{landed} kills over a {write_time:.2f} s write phase; partial dir bytes at kill: {sorted(partial_bytes)}")


def test_sigkill_of_the_real_cli(synthetic, tmp_path):
    """The same through ``python -m woqconv``: the user's process, killed; the CLI rerun names the leftover."""
    src, reference = synthetic
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "woqconv", "convert", str(src), "-o", str(out), "--to", TARGET, "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    while not partial_dir_for(out).exists():
        assert proc.poll() is None, "the CLI ended before writing"
        time.sleep(0.0005)
    time.sleep(0.01)  # into the write phase, which lasts well over 0.1 s even on a fast machine
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [partial_dir_for(out).name]
    r = subprocess.run([sys.executable, "-m", "woqconv", "convert", str(src), "-o", str(out), "--to", TARGET],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "removed a partial output left by an interrupted run" in r.stdout and partial_dir_for(out).name in r.stdout
    assert digest(out) == reference and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_overwrite_replaces_the_output(exchange, tmp_path, monkeypatch):
    """--overwrite replaces OUT in one step where renameat2 can swap (at no moment is there no OUT),
    and with two renames where it cannot."""
    from woqconv.io import output

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "from-a").touch()
    assert output._exchange(a, b) and (b / "from-a").exists() and not (a / "from-a").exists()  # this system can swap
    shutil.rmtree(a), shutil.rmtree(b)
    if not exchange:
        monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    src = fixture_path("ar-g32-sym-auto_awq")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous output: overwrite replaces only a model directory
    (out / "old.txt").write_text("previous output")
    woqconv.convert(src, out, to="gptq-v2", overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftover_of_a_kill_between_renames_is_cleaned_and_named(tmp_path):
    """Where the exchange is unavailable, a kill between the two renames leaves .OUT.woqconv-replaced."""
    src = fixture_path("ar-g32-sym-auto_awq")
    out = tmp_path / "out"
    replaced_dir_for(out).mkdir()
    (replaced_dir_for(out) / "model.safetensors").write_text("an old output, being replaced")
    report = woqconv.convert(src, out, to="gptq-v2")
    assert any(replaced_dir_for(out).name in w for w in report.warnings), report.warnings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- full disks -------------------------------------------------------------------------------

def _convert_cli(src: Path, out: Path):
    from typer.testing import CliRunner

    from woqconv.cli.app import app

    return CliRunner().invoke(app, ["convert", str(src), "-o", str(out), "--to", "gptq-v2", "-q"])


def _one_line_no_output(r, out: Path, problem: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"woqconv: error: {out}: ") and problem in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if "woqconv" in p.name]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB filesystem made for the test (needs root; skipped where mounting is denied)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_gives_one_line_and_no_output(small_tmpfs):
    out = small_tmpfs / "out"
    r = _convert_cli(fixture_path("ar-g32-asym-auto_gptq"), out)  # ~370 KB: does not fit
    _one_line_no_output(r, out, "No space left on device")
    assert not any(small_tmpfs.iterdir()), "the partial directory must be removed"


@pytest.mark.parametrize("where", ["tensor data", "tensor copy", "json"])
def test_injected_write_error_gives_one_line_and_no_output(where, tmp_path, monkeypatch):
    """ENOSPC raised by the write calls themselves, wherever they are (for systems where no test
    filesystem can be mounted)."""

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "tensor data":
        monkeypatch.setattr("woqconv.io.safetensors_io.os.pwrite", full)
    elif where == "tensor copy":
        monkeypatch.setattr("woqconv.io.safetensors_io.SafetensorsFile._copy_range", full)  # whole files and single tensors
    else:
        monkeypatch.setattr("pathlib.Path.write_text", full)
    out = tmp_path / "out"
    _one_line_no_output(_convert_cli(fixture_path("ar-g32-asym-auto_gptq"), out), out, "No space left on device")
