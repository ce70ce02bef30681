"""Mixed precision: AutoRound's per-layer layer_config (8-bit sym down_proj, a 4-bit g128 o_proj in a 4-bit g32
asym model), exported as GPTQModel ``dynamic`` (auto_gptq) and AutoRound ``extra_config`` (auto_round:gptqmodel)."""

from __future__ import annotations

import json

import pytest
import torch

import woqconv
from woqconv.errors import RefusedConversion
from woqconv.formats.gptq import dynamic_override

from conftest import MANIFEST, fixture_path
from loading import run_loads

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

MIXED = sorted(n for n, e in MANIFEST.items() if e.get("layer_config"))
EIGHT_BIT = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
G128 = ["model.layers.1.self_attn.o_proj"]


def _layers(path):
    with woqconv.open_checkpoint(path) as ckpt:
        return {layer.name: layer for layer in ckpt.iter_layers()}


def test_both_exports_read_with_each_layers_own_precision():
    assert len(MIXED) == 2
    a, b = (_layers(fixture_path(n)) for n in MIXED)
    for name, layer in a.items():
        want_bits = 8 if name in EIGHT_BIT else 4
        want_gs = 128 if name in G128 else 32
        assert (layer.bits, layer.group_size) == (want_bits, want_gs), name
        assert layer.is_symmetric == (name in EIGHT_BIT), name
        # The two exports of one run hold the same integers (the manifest's own numpy decode agrees).
        assert torch.equal(layer.dequantize(), b[name].dequantize()), name


def test_inspect_shows_the_mix():
    r = woqconv.inspect(fixture_path("ar-mixed-g32-asym-auto_gptq"))
    mix = [(p["bits"], p["group_size"], p["sym"], p["layers"]) for p in r.precisions]
    assert mix == [(4, 32, False, 11), (8, 32, True, 2), (4, 128, False, 1)]
    assert r.precisions[1]["names"] == EIGHT_BIT and r.precisions[2]["names"] == G128
    assert json.loads(json.dumps(r.to_dict()))["precisions"][1]["names"] == EIGHT_BIT


def test_dynamic_resolution_is_gptqmodels_first_match():
    from gptqmodel.quantization.config import dynamic_get

    dynamic = {r"+:.*down_proj": {"bits": 8}, r"-:model\.layers\.1\.mlp\.down_proj": {}, "model_x": {"bits": 2},
               r"+:model\.layers\.0\.mlp\.(gate|up)_proj": {"group_size": 64}}
    names = [f"model.layers.{i}.mlp.{m}" for i in (0, 1) for m in ("down_proj", "gate_proj", "up_proj")] + ["model_x", "model_xy"]
    for n in names:
        assert dynamic_override(dynamic, n) == dynamic_get(dynamic, n), n


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    src = fixture_path("ar-mixed-g32-asym-auto_gptq")
    return {to: woqconv.convert(src, root / to, to=to) and root / to for to in ("gptq", "gptq-v2", "inc")}


def test_conversions_keep_every_layers_precision_and_weights(converted):
    src = _layers(fixture_path("ar-mixed-g32-asym-auto_gptq"))
    for to, out in converted.items():
        got = _layers(out)
        for name, layer in src.items():
            assert (got[name].bits, got[name].group_size) == (layer.bits, layer.group_size), (to, name)
            assert torch.equal(got[name].dequantize(), layer.dequantize()), (to, name)
    dynamic = json.loads((converted["gptq-v2"] / "quantize_config.json").read_text())["dynamic"]
    assert dynamic_override(dynamic, EIGHT_BIT[0]) == {"bits": 8, "group_size": 32, "sym": True}
    assert dynamic_override(dynamic, G128[0]) == {"bits": 4, "group_size": -1, "sym": False}
    assert dynamic_override(dynamic, "model.layers.0.mlp.gate_proj") is None


@pytest.mark.parametrize("to", ["awq", "hpu", "inc-hf"])
def test_single_precision_targets_refuse_naming_the_layers(to, tmp_path):
    with pytest.raises(RefusedConversion) as e:
        woqconv.convert(fixture_path("ar-mixed-g32-asym-auto_gptq"), tmp_path / "o", to=to)
    msg = str(e.value)
    assert "mixed precision" in msg and all(n in msg for n in EIGHT_BIT + G128) and "\n" not in msg
    assert not (tmp_path / "o").exists()


def test_outputs_load_with_the_source_logits(converted, tmp_path):
    """gptq-v2 through GPTQModel's own loader (transformers 5.23 + optimum ignore ``dynamic``), INC default
    through INC (per-module qconfig entries), against the source through transformers + auto-round."""
    rows = run_loads([("transformers", fixture_path("ar-mixed-g32-asym-auto_round_gptqmodel")),
                      ("gptqmodel", converted["gptq-v2"]), ("inc-default", converted["inc"])], tmp_path)
    for row in rows.values():
        assert "error" not in row, row
    ref = torch.load(rows[str(fixture_path("ar-mixed-g32-asym-auto_round_gptqmodel"))]["file"])
    for out in (converted["gptq-v2"], converted["inc"]):
        assert (torch.load(rows[str(out)]["file"]) - ref).abs().max().item() < 1e-3, out


@pytest.mark.loaders
def test_verify_runs_mixed_gptq_in_gptqmodels_own_loader(converted):
    """transformers' GPTQ dispatch cannot build per-module `dynamic` precisions; verify runs the output in
    GPTQModel's loader. The source (asymmetric GPTQ v1 by AutoRound, which GPTQModel refuses to load) is
    referenced by woqconv's dequantization into the dense architecture."""
    report = woqconv.verify(converted["gptq-v2"], against=fixture_path("ar-mixed-g32-asym-auto_gptq"))
    assert report.passed, report.failures
    assert (report.loader, report.metrics["loader_module"]) == ("gptqmodel", "TorchLinear")
    assert report.reference.startswith("dense:") and report.metrics["max_abs_logit_diff"] < 1e-3
