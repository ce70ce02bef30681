"""inspect reports what the data says, for every fixture the real libraries wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import MANIFEST, fixture_names, fixture_path

import woqconv

STABLE_KEYS = {"format", "bits", "group_size", "sym", "zero_point_convention", "g_idx", "layers", "warnings"}
LAYER_KEYS = {"name", "in_features", "out_features", "bits", "group_size"}


@pytest.mark.parametrize("name", fixture_names())
def test_inspect_matches_manifest(name):
    entry = MANIFEST[name]
    r = woqconv.inspect(fixture_path(name))
    assert r.bits == entry["bits"]
    assert r.group_size == entry["group_size"]
    assert r.sym == entry["sym"]
    # A symmetric layout that stores no zero points (INC non-optimum sym) has z = 2^(b-1) by definition,
    # which woqconv reports as the raw (v2) convention.
    assert r.zero_point_convention == {"none": "v2"}.get(entry["zero_point_convention"], entry["zero_point_convention"])
    assert r.g_idx == entry["g_idx"]
    assert r.quantized_modules == 14  # 7 linears x 2 decoder layers; lm_head is never quantized here
    shapes = {(layer.in_features, layer.out_features) for layer in r.layers}
    assert shapes == {(128, 128), (128, 64), (128, 384), (384, 128)}


def test_mislabelled_v2_under_v1_config_is_read_as_v2_and_reported():
    r = woqconv.inspect(fixture_path("mislabelled-v2-as-v1-g32-sym"))
    assert (r.zero_point_convention, r.zero_point_convention_declared, r.zero_point_convention_source) == ("v2", "v1", "data")
    assert any("every stored zero point is 8" in w for w in r.warnings)
    # The data decides, so the mislabelled copy reads exactly like the correctly labelled original.
    with woqconv.open_checkpoint(fixture_path("mislabelled-v2-as-v1-g32-sym")) as a, woqconv.open_checkpoint(
        fixture_path("ar-g32-sym-auto_round_gptqmodel")
    ) as b:
        for la, lb in zip(a.iter_layers(), b.iter_layers()):
            assert (la.dequantize() == lb.dequantize()).all()


def test_forcing_a_convention_is_honoured_but_contradiction_reported():
    r = woqconv.inspect(fixture_path("mislabelled-v2-as-v1-g32-sym"), zero_point_convention="v1")
    assert r.zero_point_convention == "v1" and r.zero_point_convention_source == "user"
    assert any("symmetric v2 data" in w for w in r.warnings)


def test_zero_point_zero_in_inc_v1_is_read_modularly_and_flagged():
    r = woqconv.inspect(fixture_path("inc-hf-rtn-zp0-g32-asym"))
    assert any("stored as 0xf" in w for w in r.warnings)
    with woqconv.open_checkpoint(fixture_path("inc-hf-rtn-zp0-g32-asym")) as ckpt:
        q = ckpt.read_layer("model.layers.0.self_attn.q_proj", codes=False)
        assert q.zeros[:8, 0].tolist() == [0] * 8  # forced z = 0
        assert q.zeros[8:16, 0].tolist() == [15] * 8  # forced z = 15


def test_act_order_fixture_is_scattered():
    r = woqconv.inspect(fixture_path("inc-hf-gptq-actorder-g32-asym"))
    assert r.g_idx == "scattered" and r.desc_act_declared is True


def test_cli_json_has_stable_keys():
    out = subprocess.run(
        [sys.executable, "-m", "woqconv", "inspect", str(fixture_path("ar-g128-asym-auto_awq")), "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout)
    assert STABLE_KEYS <= set(data)
    assert LAYER_KEYS <= set(data["layers"][0])
    assert (data["format"], data["bits"], data["group_size"], data["sym"], data["zero_point_convention"], data["g_idx"]) == (
        "awq", 4, 128, False, "v2", "none"
    )


def test_inspect_reads_no_codes(monkeypatch):
    """inspect must read headers and small tensors only, never qweight."""
    from woqconv.io import safetensors_io

    read = []
    original = safetensors_io.SafetensorsFile.read_bytes  # every read of tensor data goes through it

    def spy(self, name, *args):
        read.append(name)
        return original(self, name, *args)

    monkeypatch.setattr(safetensors_io.SafetensorsFile, "read_bytes", spy)
    woqconv.inspect(fixture_path("ar-g32-asym-auto_gptq"))  # without torch
    woqconv.inspect(fixture_path("ar-w3-g32-asym-auto_gptq"))  # 3 bits: the torch scan
    assert read and not any(n.endswith(".qweight") for n in read)
