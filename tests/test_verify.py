"""woqconv verify: passes on real conversions, and catches every planted corruption by layer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import woqconv
from woqconv.kernels import packing
from woqconv.runtime.verify import verify

import cli_in_process
from conftest import fixture_path

LAYER = "model.layers.1.self_attn.q_proj"


def run_cli(*args):
    return cli_in_process.run_cli(*args, env={"COLUMNS": "200"})  # wide enough that rich does not fold layer names


def _edit(out, fn):
    t = load_file(out / "model.safetensors")
    fn(t)
    save_file(t, out / "model.safetensors", metadata={"format": "pt"})


def _swap_awq_slots(t):
    w = t[f"{LAYER}.qweight"].clone()
    fields = packing.unpack(w, 4, dim=1)  # sequential nibbles as stored
    fields[:, [0, 1]] = fields[:, [1, 0]]
    t[f"{LAYER}.qweight"] = packing.pack(fields, 4, dim=1)


def _change_one_zero(t):
    z = packing.unpack(t[f"{LAYER}.qzeros"], 4, dim=1)
    z[0, 5] = (int(z[0, 5]) + 3) % 16
    t[f"{LAYER}.qzeros"] = packing.pack(z, 4, dim=1)


def _drop_layer(t):
    for k in [k for k in t if k.startswith(LAYER + ".")]:
        del t[k]


def _relabel_v1(out):
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = cfg["quantization_config"]["format"] = "gptq"
    (out / "config.json").write_text(json.dumps(cfg))


# (source fixture, target, corruption, layer named, check named)
FAULTS = {
    "v2 zeros under a v1 label": ("ar-g32-asym-auto_round_gptqmodel", "gptq-v2", _relabel_v1, LAYER, "zero points"),
    "one zero point changed": ("ar-g32-asym-auto_gptq", "gptq-v2", lambda o: _edit(o, _change_one_zero), LAYER, "zero points"),
    "two AWQ nibble slots swapped": ("ar-g32-asym-auto_gptq", "awq", lambda o: _edit(o, _swap_awq_slots), LAYER, "codes"),
    "g_idx dropped from an act-order layer": (
        "inc-hf-gptq-actorder-g32-asym", "gptq", lambda o: _edit(o, lambda t: t.pop(f"{LAYER}.g_idx")), LAYER, "zero points",
    ),
    "scales cast to bf16 in an fp16 target": (
        "ar-g32-asym-auto_gptq", "awq", lambda o: _edit(o, lambda t: t.__setitem__(f"{LAYER}.scales", t[f"{LAYER}.scales"].to(torch.bfloat16))),
        LAYER, "scales dtype",
    ),
    "a missing layer": ("ar-g32-asym-auto_gptq", "gptq", lambda o: _edit(o, _drop_layer), LAYER, "complete"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_planted_fault_fails_with_exit_1_naming_the_layer(fault, tmp_path):
    src, target, corrupt, layer, check = FAULTS[fault]
    out = tmp_path / "out"
    woqconv.convert(fixture_path(src), out, to=target)
    assert verify(out, against=fixture_path(src), run=False).passed  # clean before the fault
    corrupt(out)
    r = run_cli("verify", out, "--against", fixture_path(src), "--no-run", "--format", "json")
    assert r.returncode == 1, (r.stdout[-1500:], r.stderr[-1500:])
    report = json.loads(r.stdout)
    failed = [(c["check"], c["layer"]) for c in report["checks"] if not c["passed"]]
    assert (check, layer) in failed, failed
    # Layers are compared in parallel threads (2 by default here): one thread reports the same checks,
    # in the same order.
    one = verify(out, against=fixture_path(src), run=False, workers=1)
    assert [(c.check, c.layer, c.passed, c.detail) for c in one.checks] == [(c["check"], c["layer"], c["passed"], c["detail"]) for c in report["checks"]]
    text = run_cli("verify", out, "--against", fixture_path(src), "--no-run", "--workers", "1")
    assert text.returncode == 1 and layer in text.stdout and "FAIL" in text.stdout


@pytest.mark.slow
def test_mislabelled_output_also_fails_the_run(tmp_path):
    """The label fault, run with the real loader: transformers follows the v1 label and misreads."""
    src = fixture_path("ar-g32-asym-auto_round_gptqmodel")
    woqconv.convert(src, tmp_path / "out", to="gptq-v2")
    _relabel_v1(tmp_path / "out")
    report = verify(tmp_path / "out", against=src)
    failed = {c.check for c in report.failures}
    assert "run: max |logit diff|" in failed and "zero points" in failed
    assert report.metrics["max_abs_logit_diff"] > 0.05


# (source, target, whether the HPU cache is compared, a fault planted in LAYER's codes or None)
UNPACKED_CASES = [
    ("ar-g32-asym-auto_gptq", "awq", False, _swap_awq_slots),  # GPTQ words against AWQ's, one layer differing
    ("ar-g32-asym-auto_gptq", "awq", False, None),
    ("ar-g32-asym-auto_gptq", "hpu", True, None),  # the Gaudi cache's sequential order
    ("ar-g128-sym-auto_awq", "gptq", False, None),  # AWQ source, GPTQ output
    ("ar-w3-g32-asym-auto_round_gptqmodel", "gptq", False, None),  # 3 bits: v2 against v1 words, same layout
    ("bnb-nf4-fp16", "nf4", False, None),  # codebook: no packed words, always the full comparison
]


@pytest.mark.parametrize("src,target,cache,fault", UNPACKED_CASES)
def test_codes_compared_without_transposes_agree_with_the_readers_codes(src, target, cache, fault, tmp_path):
    """verify decides equal codes on each side's unpacked fields, before the readers transpose them; for
    every layer that answer is the one the readers' codes give, and a difference sends the layer to the
    full comparison that counts it."""
    from woqconv.runtime.verify import _codes_equal_unpacked_in_place
    from woqconv.source import open_checkpoint

    out = tmp_path / "out"
    woqconv.convert(fixture_path(src), out, to=target, allow_bf16=True)
    if fault:
        _edit(out, fault)
    with open_checkpoint(out, hpu_cache=cache) as o, open_checkpoint(fixture_path(src)) as s:
        answers = {}
        for layer in o.layers:
            packed = _codes_equal_unpacked_in_place(o, s, layer.name)
            a, b = o.read_layer(layer.name), s.read_layer(layer.name)
            unpacked = torch.equal(a.idx, b.idx) if o.is_codebook else torch.equal(a.codes, b.codes)
            answers[layer.name] = (packed, unpacked)
        codebook = o.is_codebook
    assert answers
    if codebook:
        assert all(packed is False and unpacked for packed, unpacked in answers.values())
    else:
        assert {name: packed for name, (packed, _) in answers.items()} == {name: unpacked for name, (_, unpacked) in answers.items()}
        assert {name for name, (packed, _) in answers.items() if not packed} == ({LAYER} if fault else set())


# A conversion per target, including INC's loaders and the HPU path (emulated here), with real runs.
PASSING = [
    ("ar-g32-asym-auto_gptq", "awq"),
    ("ar-g128-sym-auto_awq", "gptq"),
    ("ar-g32-asym-auto_awq", "gptq-v2"),
    ("ar-g32-asym-auto_round", "inc"),
    ("inc-hf-gptq-actorder-g32-asym", "inc-hf"),
    ("ar-g32-asym-auto_gptq", "hpu"),
    ("mislabelled-v2-as-v1-g32-sym", "gptq-v2"),
]


@pytest.mark.loaders
@pytest.mark.parametrize("src,target", PASSING)
def test_verify_passes_real_conversions(src, target, tmp_path, record_property):
    out = tmp_path / "out"
    woqconv.convert(fixture_path(src), out, to=target, allow_bf16=True)
    report = verify(out, against=fixture_path(src))
    assert report.passed, [(c.check, c.layer, c.detail) for c in report.failures]
    assert report.device == "cpu" or "emulated" in report.device
    record_property("verify", json.dumps({"seconds": report.seconds, **report.metrics}))


@pytest.mark.slow
def test_verify_without_source_uses_the_dense_reference(tmp_path):
    woqconv.convert(fixture_path("ar-g32-sym-auto_gptq"), tmp_path / "out", to="awq")
    report = verify(tmp_path / "out")
    assert report.passed and report.reference.startswith("dense:")


def test_absent_device_is_one_line_and_exit_2(tmp_path):
    import importlib.util

    woqconv.convert(fixture_path("ar-g32-sym-auto_gptq"), tmp_path / "out", to="awq")
    if importlib.util.find_spec("habana_frameworks") is None:
        r = run_cli("verify", tmp_path / "out", "--device", "hpu")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "hpu requested" in r.stderr


@pytest.mark.slow
def test_convert_then_verify(tmp_path):
    r = run_cli("convert", fixture_path("ar-g32-sym-auto_awq"), "-o", tmp_path / "out", "--to", "gptq", "--verify", "--format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(r.stdout)
    assert data["verify"]["passed"] and data["lossless"]


def test_thresholds_are_adjustable_from_the_cli(tmp_path):
    woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "out", to="hpu", allow_bf16=True)
    strict = run_cli("verify", tmp_path / "out", "--against", fixture_path("ar-g32-asym-auto_gptq"), "--no-run", "--threshold", "bf16_max_weight_rel_fro=0")
    loose = run_cli("verify", tmp_path / "out", "--against", fixture_path("ar-g32-asym-auto_gptq"), "--no-run")
    bad = run_cli("verify", tmp_path / "out", "--no-run", "--threshold", "nonsense=1")
    assert loose.returncode == 0, loose.stdout[-1500:]
    # A passing verify states the loss the conversion accepted, with its count, never "bit-identical".
    accepted = verify(tmp_path / "out", against=fixture_path("ar-g32-asym-auto_gptq"), run=False)
    cast = [c.accepted for c in accepted.checks if c.accepted]
    assert cast and all(a["kind"] == "bf16 scales" and 0 < a["changed"] <= a["total"] for a in cast)
    changed, total = sum(a["changed"] for a in cast), sum(a["total"] for a in cast)
    assert f"{changed:,} of {total:,} values changed" in loose.stdout and "bit-identical to the source" not in loose.stdout
    assert strict.returncode == 1 and "bf16 scales" in strict.stdout
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_hpu_output_of_an_inc_source_runs_on_the_hpu_path(tmp_path):
    woqconv.convert(fixture_path("inc-hf-rtn-g32-asym"), tmp_path / "out", to="hpu", allow_bf16=True)
    report = verify(tmp_path / "out", against=fixture_path("inc-hf-rtn-g32-asym"))
    assert report.passed and report.loader == "inc-hpu" and report.metrics["precision"] == "bf16"
    assert report.metrics["loader_module"] == "HPUWeightOnlyLinear" and report.metrics["max_abs_logit_diff"] > 0


def test_verify_is_public_api_and_imported_on_first_use():
    # woqconv.verify, as the package docstring and verify's own example use it; importing woqconv does
    # not import the verifier (it imports torch), only the first use of the name does.
    code = ("import sys, woqconv; assert 'woqconv.runtime.verify' not in sys.modules; "
            "from woqconv.runtime.verify import VerifyReport, verify; "
            "assert woqconv.verify is verify and woqconv.VerifyReport is VerifyReport; "
            "assert 'verify' in woqconv.__all__ and 'VerifyReport' in woqconv.__all__")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_the_loader_worker_stays_warm_and_outlives_a_failed_run(tmp_path):
    """Verify's loader runs fork from one warm worker (torch and transformers imported once): a run that fails
    leaves it serving, a killed worker is replaced, and each run still happens in a child of its own."""
    from woqconv.runtime import runs

    src = fixture_path("ar-g32-sym-auto_gptq")
    (tmp_path / "a").mkdir()
    first = runs.run_in_loaders(tmp_path / "a", "cpu", [("dense", src), ("transformers", tmp_path / "missing")])
    server = runs.WarmWorker._current.proc.pid
    assert "file" in first[0] and first[0]["loader"] == "dense"
    assert "error" in first[1] and first[1]["loader"] == "transformers"
    (tmp_path / "b").mkdir()
    again = runs.run_in_loaders(tmp_path / "b", "cpu", [("dense", src)])
    assert runs.WarmWorker._current.proc.pid == server
    assert torch.equal(torch.load(first[0]["file"]), torch.load(again[0]["file"]))
    os.killpg(server, signal.SIGKILL)
    runs.WarmWorker._current.proc.wait()
    (tmp_path / "c").mkdir()
    replaced = runs.run_in_loaders(tmp_path / "c", "cpu", [("dense", src)])
    assert runs.WarmWorker._current.proc.pid != server
    assert torch.equal(torch.load(first[0]["file"]), torch.load(replaced[0]["file"]))
