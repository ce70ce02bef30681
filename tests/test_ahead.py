"""Re-layout ahead (convert/ahead.py): worker processes that write GPTQ -> AWQ qweights into predicted output
files while the converter imports torch and plans (the torch path) must leave exactly the bytes a conversion without them
writes (and AutoRound's own AWQ export's codes), whatever goes wrong with them, and nothing on refusal."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import fixture_path
from corpus import shard
from safetensors.torch import load_file

import woqconv
from woqconv.convert import ahead, direct, head_start
from woqconv.errors import RefusedConversion
from woqconv.packing import AWQ_ORDER
from woqconv.safetensors_io import SafetensorsWriter, TensorSpec

GPTQ = "ar-g128-asym-auto_gptq"


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """The re-layout ahead serves the torch path; the numpy path (convert/direct.py) takes these conversions
    otherwise, and starts no workers (tests/test_direct.py)."""
    monkeypatch.setattr(direct, "ENABLED", False)


@pytest.fixture
def held(monkeypatch) -> list[bool]:
    """Every worker started, and whether each tensor offered to a writer as already written was taken."""
    monkeypatch.setattr(ahead, "MIN_BYTES", 0)  # the fixtures are far below the size that pays at the CLI
    seen: list[bool] = []
    holds = SafetensorsWriter.holds

    def spy(self, name, derivation):
        seen.append(holds(self, name, derivation))
        return seen[-1]

    monkeypatch.setattr(SafetensorsWriter, "holds", spy)
    return seen


@pytest.fixture
def workers(monkeypatch) -> list:
    started: list = []
    init = ahead._Worker.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(ahead._Worker, "__init__", spy)
    return started


def _files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _without_ahead(src, out, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(head_start, "start", lambda *a, **k: None)
        woqconv.convert(src, out, to="awq", workers=2)


def _qweights(src) -> int:
    return sum(1 for p in src.glob("*.safetensors") for n in load_file(p) if n.endswith(".qweight"))


@pytest.mark.parametrize("name", [GPTQ, "ar-g32-sym-auto_gptq"])
def test_output_is_the_one_written_without_workers_and_autoawqs_own(name, tmp_path, monkeypatch, held, workers):
    woqconv.convert(fixture_path(name), tmp_path / "with", to="awq", workers=2)
    assert len(workers) == 2 and held == [True] * _qweights(fixture_path(name))  # every qweight came from a worker
    assert all(w.proc.poll() is not None for w in workers)
    _without_ahead(fixture_path(name), tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")
    ours = load_file(tmp_path / "with" / "model.safetensors")
    theirs = load_file(fixture_path(name.replace("auto_gptq", "auto_awq")) / "model.safetensors")
    qweights = [n for n in theirs if n.endswith(".qweight")]
    assert qweights and all(torch.equal(ours[n], theirs[n]) for n in qweights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with", "without"]  # no partial directory left


def test_sharded_source(tmp_path, monkeypatch, held):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    shard(src)  # halves of the sorted names: a layer's tensors may lie in two shards, its output in one
    woqconv.convert(src, tmp_path / "with", to="awq", workers=2)
    assert held == [True] * _qweights(src)
    _without_ahead(src, tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")


def test_a_worker_that_fails_leaves_its_tensors_to_the_writer(tmp_path, monkeypatch, held, workers):
    monkeypatch.setattr(ahead, "WORKER_MODULE", "woqconv.no_such_module")  # exits at once, having written nothing
    woqconv.convert(fixture_path(GPTQ), tmp_path / "with", to="awq", workers=2)
    assert held and not any(held) and len(workers) == 2
    _without_ahead(fixture_path(GPTQ), tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")


def test_a_wrong_prediction_stops_the_workers_before_the_file_is_rewritten(tmp_path, monkeypatch, held, workers):
    predicted = ahead.predicted_specs

    def wrong(ckpt, family):
        out = predicted(ckpt, family)
        for specs, _ in out.values():
            specs.append(TensorSpec("not.in.the.plan", "I32", (8,)))
        return out

    monkeypatch.setattr(ahead, "predicted_specs", wrong)
    stops = []
    monkeypatch.setattr(ahead.Ahead, "stop", lambda self, _stop=ahead.Ahead.stop: (stops.append(self), _stop(self))[1])
    woqconv.convert(fixture_path(GPTQ), tmp_path / "with", to="awq", workers=2)
    # Stopped when the writer saw the header (then once more at the end); nothing was taken from the workers.
    assert len(stops) >= 2 and held and not any(held) and all(w.over for w in workers)
    _without_ahead(fixture_path(GPTQ), tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")


def test_a_tensor_planned_otherwise_is_written_by_the_writer_after_its_worker(tmp_path, monkeypatch, held):
    monkeypatch.setattr(ahead, "_same_recipe", lambda *a: False)  # as for codes the plan changes (requantized)
    woqconv.convert(fixture_path(GPTQ), tmp_path / "with", to="awq", workers=2)
    assert held and not any(held)
    _without_ahead(fixture_path(GPTQ), tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")


def test_refused_conversion_stops_the_workers_and_leaves_nothing(tmp_path, held, workers):
    src = fixture_path("inc-hf-gptq-actorder-g32-asym")  # scattered act-order: AWQ has no g_idx
    with pytest.raises(RefusedConversion, match="act-order"):
        woqconv.convert(src, tmp_path / "out", to="awq", workers=2)
    assert workers and all(w.proc.poll() is not None for w in workers)
    assert list(tmp_path.iterdir()) == []


def test_who_gets_workers(tmp_path, monkeypatch, workers):
    out = tmp_path / "out"
    # Small qweights: the writer is quicker than starting processes.
    assert head_start.start(fixture_path(GPTQ), out, "awq", False, workers=2) is None
    monkeypatch.setattr(ahead, "MIN_BYTES", 0)
    assert head_start.start(fixture_path(GPTQ), out, "awq", False, workers=2, requantize="search") is None  # new codes
    assert ahead.predict(fixture_path("ar-w3-g32-asym-auto_gptq"), "awq", out) == {}  # not 4-bit
    assert ahead.predict(fixture_path("ar-g32-asym-auto_awq"), "awq", out) == {}  # already AWQ
    assert ahead.predict(fixture_path(GPTQ), "gptq-v2", out) == {}  # keeps GPTQ's layout (head_start copies it)
    assert ahead.predict(tmp_path / "missing", "awq", out) == {}  # the scan reports it
    assert workers == [] and not out.exists()


def test_a_worker_that_cannot_start_stops_the_one_that_did(tmp_path, monkeypatch, held, workers):
    popen = ahead.subprocess.Popen
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no more processes")
        return popen(*args, **kwargs)

    monkeypatch.setattr(ahead.subprocess, "Popen", second_fails)
    woqconv.convert(fixture_path(GPTQ), tmp_path / "with", to="awq", workers=2)
    assert len(workers) == 1 and workers[0].over and workers[0].proc.poll() is not None
    assert not any(held)
    _without_ahead(fixture_path(GPTQ), tmp_path / "without", monkeypatch)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")


def test_a_worker_stops_soon_after_its_converter_is_killed(tmp_path):
    # A SIGKILLed converter cannot stop its workers. Each worker reports every job on a pipe to the
    # converter, so its next report fails (EPIPE) and it exits instead of re-laying out the rest.
    src, out = tmp_path / "src.safetensors", tmp_path / "out.bin"
    words = np.random.default_rng(0).integers(-(2**31), 2**31, size=(512, 11008), dtype=np.int64).astype(np.int32)
    writer = SafetensorsWriter(src, [TensorSpec("w", "I32", words.shape)])
    writer.write_array("w", words)
    writer.close()
    out.write_bytes(b"\0" * words.nbytes)
    jobs = [[i, str(src), "w", str(out), 0, list(AWQ_ORDER)] for i in range(2000)]  # ~40 s of work
    converter = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, time\n"
            f"w = subprocess.Popen([sys.executable, '-m', {ahead.WORKER_MODULE!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
            "w.stdin.write(sys.stdin.buffer.read()); w.stdin.close()\n"
            "print(w.pid, flush=True); w.stdout.readline(); print('first job done', flush=True); time.sleep(120)\n"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    converter.stdin.write(json.dumps(jobs))
    converter.stdin.close()
    worker_pid = int(converter.stdout.readline())
    assert converter.stdout.readline().strip() == "first job done"
    os.kill(converter.pid, signal.SIGKILL)
    converter.wait()
    deadline = time.monotonic() + 10
    while _running(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _running(worker_pid), "the worker kept re-laying out after its converter was killed"
    finally:
        if _running(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie no one reaps has stopped
    except FileNotFoundError:
        return False
