"""woqconv's conversions against AutoRound's own exports of the same quantization run.

AutoRound exports one run to several formats; converting one export with woqconv must give the
other export's tensors byte for byte, except where AutoRound's v1 export is itself lossy (it clamps
z = 0 to a stored 0), which woqconv must name instead of reproducing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file

import woqconv
from woqconv.kernels import packing
from woqconv.errors import RefusedConversion

RUNS_4BIT = ["g32-sym", "g32-asym", "g128-sym", "g128-asym"]
PACKED = (".qweight", ".qzeros", ".scales")


def _packed(path):
    return {k: v for k, v in load_file(path / "model.safetensors").items() if k.endswith(PACKED)}


def _assert_same(ours: dict, theirs: dict):
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("run", RUNS_4BIT)
def test_auto_gptq_to_awq_equals_auto_awq_export(run, tmp_path):
    woqconv.convert(fixture_path(f"ar-{run}-auto_gptq"), tmp_path / "awq", to="awq")
    _assert_same(_packed(tmp_path / "awq"), _packed(fixture_path(f"ar-{run}-auto_awq")))


@pytest.mark.parametrize("run", RUNS_4BIT)
def test_auto_awq_to_gptq_equals_auto_gptq_export(run, tmp_path):
    woqconv.convert(fixture_path(f"ar-{run}-auto_awq"), tmp_path / "gptq", to="gptq")
    _assert_same(_packed(tmp_path / "gptq"), _packed(fixture_path(f"ar-{run}-auto_gptq")))
    # auto_gptq writes a trivial g_idx, and so does woqconv's gptq target.
    theirs = load_file(fixture_path(f"ar-{run}-auto_gptq") / "model.safetensors")
    ours = load_file(tmp_path / "gptq" / "model.safetensors")
    for k in theirs:
        if k.endswith(".g_idx"):
            assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("run", RUNS_4BIT + ["w2-g32-asym", "w3-g32-asym", "w8-g32-asym"])
def test_to_gptq_v2_equals_auto_round_gptqmodel_export(run, tmp_path):
    """auto_round:gptqmodel is GPTQ layout with raw (v2) zero points and a trivial g_idx."""
    src = f"ar-{run}-auto_awq" if run in RUNS_4BIT else f"ar-{run}-auto_round"
    woqconv.convert(fixture_path(src), tmp_path / "v2", to="gptq-v2")
    _assert_same(_packed(tmp_path / "v2"), _packed(fixture_path(f"ar-{run}-auto_round_gptqmodel")))


@pytest.mark.parametrize("run", ["g32-sym", "g128-sym", "g32-asym", "g128-asym"])
def test_auto_round_native_export_matches_its_twin(run, tmp_path):
    """auto_round writes auto_gptq packing when sym, auto_awq packing when asym (FORMATS.md 5)."""
    twin = "auto_gptq" if "-sym" in run else "auto_awq"
    target = "gptq" if twin == "auto_gptq" else "awq"
    woqconv.convert(fixture_path(f"ar-{run}-auto_round"), tmp_path / "out", to=target)
    _assert_same(_packed(tmp_path / "out"), _packed(fixture_path(f"ar-{run}-{twin}")))


def test_zero_point_zero_awq_to_v1_is_refused_and_names_the_groups(tmp_path):
    with pytest.raises(RefusedConversion) as e:
        woqconv.convert(fixture_path("ar-zp0-g32-asym-auto_awq"), tmp_path / "v1", to="gptq")
    msg = str(e.value)
    assert "8 groups in 1 layer" in msg and "model.layers.0.self_attn.q_proj (8)" in msg and "`to=gptq-v2`" in msg
    assert not (tmp_path / "v1").exists()


def test_zero_point_zero_groups_are_exactly_where_autoround_v1_export_clamped(tmp_path):
    """gptq(auto_gptq export) -> awq differs from the auto_awq export only in the groups woqconv
    names when refusing the reverse direction: z = 0 in AWQ, stored 0 (read z = 1) in AutoRound's v1."""
    woqconv.convert(fixture_path("ar-zp0-g32-asym-auto_gptq"), tmp_path / "awq", to="awq")
    ours, theirs = _packed(tmp_path / "awq"), _packed(fixture_path("ar-zp0-g32-asym-auto_awq"))
    differing = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert differing == ["model.layers.0.self_attn.q_proj.qzeros"]
    k = differing[0]
    z_ours = packing.awq_deinterleave(packing.unpack(ours[k], 4, dim=1))
    z_theirs = packing.awq_deinterleave(packing.unpack(theirs[k], 4, dim=1))
    diff = z_ours != z_theirs
    assert int(diff.sum()) == 8
    assert bool((z_theirs[diff] == 0).all()) and bool((z_ours[diff] == 1).all())
    # Those are exactly the 8 groups of out-channels 0..7 over in-channels 0..31 that the base forced to z = 0.
    assert diff[0, :8].all() and int(diff[0, 8:].sum()) == 0 and int(diff[1:].sum()) == 0
    # And inspect warns about AutoRound's clamping when reading its v1 export.
    report = woqconv.inspect(fixture_path("ar-zp0-g32-asym-auto_gptq"))
    assert any("clamps z = 0" in w for w in report.warnings)


def test_zero_point_zero_survives_awq_to_v2(tmp_path):
    woqconv.convert(fixture_path("ar-zp0-g32-asym-auto_awq"), tmp_path / "v2", to="gptq-v2")
    _assert_same(_packed(tmp_path / "v2"), _packed(fixture_path("ar-zp0-g32-asym-auto_round_gptqmodel")))
