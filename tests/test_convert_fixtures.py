"""Every fixture x every target: lossless IR, A -> B -> A byte identity, or a refusal that names why."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import woqconv
from woqconv.errors import RefusedConversion

from conftest import MANIFEST, fixture_names, fixture_path

TARGETS = ("gptq", "gptq-v2", "awq")
FIXTURES = fixture_names()


def _ir(path):
    with woqconv.open_checkpoint(path) as ckpt:
        return {layer.name: layer for layer in ckpt.iter_layers()}, ckpt.format.name


def _expected_refusal(name: str, target: str, src_layers) -> str | None:
    entry = MANIFEST[name]
    if target == "awq" and entry["bits"] != 4:
        return "4-bit"
    if target == "awq" and entry["g_idx"] == "scattered":
        return "scattered"
    if target == "gptq" and any(bool((layer.zeros == 0).any()) for layer in src_layers.values()):
        return "zero point 0"
    return None


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURES)
def test_lossless_or_refused(name, target, tmp_path):
    src = fixture_path(name)
    src_layers, src_format = _ir(src)
    expected_refusal = _expected_refusal(name, target, src_layers)
    if expected_refusal:
        with pytest.raises(RefusedConversion, match=expected_refusal):
            woqconv.convert(src, tmp_path / "out", to=target)
        assert not (tmp_path / "out").exists()
        assert not any(tmp_path.iterdir()), "a refused conversion must write nothing"
        return

    report = woqconv.convert(src, tmp_path / "out", to=target)
    assert report.lossless and report.layers_converted == len(src_layers)
    out_layers, out_format = _ir(tmp_path / "out")
    assert out_format == target
    assert sorted(out_layers) == sorted(src_layers)
    for lname, a in src_layers.items():
        b = out_layers[lname]
        if target == "awq":
            a = a.with_contiguous_groups()  # what the target can hold; proven equal below
        assert torch.equal(a.codes, b.codes), lname
        assert torch.equal(a.zeros, b.zeros), lname
        assert a.scales.dtype == b.scales.dtype and torch.equal(a.scales, b.scales), lname
        assert torch.equal(a.group_of_channel(), b.group_of_channel()), lname
        assert torch.equal(src_layers[lname].dequantize(), b.dequantize()), lname

    # Unquantized tensors are carried byte for byte.
    src_t, out_t = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    with woqconv.open_checkpoint(src) as ckpt:
        owned = ckpt.owned_tensors()
    for t, v in src_t.items():
        if t not in owned:
            assert torch.equal(out_t[t], v), t

    # And back: A -> B -> A gives byte-identical qweight/qzeros/scales. A v1 source that holds
    # z = 0 (INC writes it modularly) cannot be written back as v1: woqconv refuses instead.
    if src_format == "gptq" and _expected_refusal(name, "gptq", src_layers):
        with pytest.raises(RefusedConversion, match="zero point 0"):
            woqconv.convert(tmp_path / "out", tmp_path / "back", to=src_format)
        return
    woqconv.convert(tmp_path / "out", tmp_path / "back", to=src_format)
    back_t = load_file(tmp_path / "back" / "model.safetensors")
    for t, v in src_t.items():
        if t.endswith((".qweight", ".qzeros", ".scales")):
            assert v.dtype == back_t[t].dtype and torch.equal(v, back_t[t]), t


def test_outputs_are_deterministic(tmp_path):
    src = fixture_path("ar-g32-asym-auto_gptq")
    woqconv.convert(src, tmp_path / "a", to="awq")
    woqconv.convert(src, tmp_path / "b", to="awq")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_input_is_not_modified(tmp_path):
    import hashlib

    src = fixture_path("ar-g128-sym-auto_round_gptqmodel")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    woqconv.convert(src, tmp_path / "out", to="awq")
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
