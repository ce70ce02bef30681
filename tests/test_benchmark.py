"""The benchmark runs end to end on a tiny shape, so that it cannot rot. Nothing here asserts a speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from woqconv.kernels import packing

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_runs_on_a_tiny_shape(tmp_path):
    result_file = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scratch", str(tmp_path / "scratch"), "--cases", "tiny",
         "--runs", "1", "--workers", "2", "--inc-route", "tiny", "--json", str(result_file)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(result_file.read_text())["results"]
    steps = {r["what"]: r for r in results}
    assert set(steps) == {"cp", "cp + fsync", "cp twice (hpu's bytes)", "convert awq", "convert gptq-v2", "convert inc-hf", "convert hpu", "inspect", "python + import torch",
                          "inc route (load, device=hpu)"}
    for step in steps.values():
        assert step["ok"] and step["median_seconds"] > 0 and step["median_peak_rss_mb"] > 0, step
    assert "| tiny | convert awq |" in proc.stdout
    # hpu writes the checkpoint twice over (inc-hf plus the Gaudi cache); its floor copies as much.
    twice, hpu = steps["cp twice (hpu's bytes)"]["median_written_bytes"], steps["convert hpu"]["median_written_bytes"]
    assert abs(twice - hpu) < 0.05 * hpu and hpu > 1.9 * steps["cp"]["median_written_bytes"] > 0
    # Synthesized data is removed unless --keep; the repository never receives any.
    assert not (tmp_path / "scratch" / "src-tiny").exists()


def test_relayout_benchmark_runs_and_checks_every_implementation():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relayout.py"), "--tiny", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| mlp") or line.startswith("| attention")]
    assert len(rows) == 6  # three shapes, two directions
    header = proc.stdout.splitlines()[0]
    assert "numpy" in header and ("C (" in header) == (packing._native is not None)
