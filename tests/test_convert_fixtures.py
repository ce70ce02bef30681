"""Every fixture x every target: lossless IR, A -> B -> A byte identity, or a refusal that names why."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import MANIFEST, base_for, fixture_names, fixture_path
from safetensors.torch import load_file

import woqconv
from woqconv.errors import RefusedConversion

TARGETS = ("gptq", "gptq-v2", "awq", "inc", "inc-hf", "hpu", "hpu-default", "compressed-tensors")
GAUDI = ("hpu", "hpu-default")
# What woqconv reads an output back as (inc-hf and hpu primary weights are the GPTQ v1 layout).
READ_BACK_AS = {"gptq": "gptq", "gptq-v2": "gptq-v2", "awq": "awq", "inc": "inc", "inc-hf": "gptq", "hpu": "gptq", "hpu-default": "inc",
                "compressed-tensors": "compressed-tensors"}
NO_G_IDX = ("awq", "hpu", "hpu-default", "compressed-tensors")
FOUR_BIT_ONLY = ("awq", "hpu", "hpu-default")
# The Gaudi cache beside each Gaudi target's weights, and what else reading it alone needs.
CACHE = {"hpu": ("hpu_model.safetensors", "config.json"), "hpu-default": ("quantized_hpu_weight.pt", "qconfig.json")}
FIXTURES = fixture_names()


def _ir(path):
    with woqconv.open_checkpoint(path) as ckpt:
        return {layer.name: layer for layer in ckpt.iter_layers()}, ckpt.format.name


def _expected_refusal(name: str, target: str, src_layers) -> str | None:
    entry = MANIFEST[name]
    if target not in ("inc", "hpu-default") and any(n.endswith(".linear") for n in src_layers):
        return "MulLinear"
    if target in FOUR_BIT_ONLY and entry["bits"] != 4:
        return "4-bit"
    if target in ("inc", "inc-hf") and entry["bits"] == 3:
        return "INC packs 3-bit codes 10 to a word"
    if target in ("inc", "inc-hf") and entry["bits"] == 8 and not entry["sym"]:
        return "int8"
    if target in NO_G_IDX and entry["g_idx"] == "scattered":
        return "scattered"
    if target == "gptq" and any(bool((layer.zeros == 0).any()) for layer in src_layers.values()):
        return "zero point 0"
    return None


def _tensors(path):
    """Every weight tensor of a checkpoint directory, whatever its container."""
    if (path / "quantized_weight.pt").exists():
        return torch.load(path / "quantized_weight.pt", weights_only=True)
    merged = {}
    for f in sorted(path.glob("*.safetensors")):
        if f.name != "hpu_model.safetensors":
            merged.update(load_file(f))
    return merged


def _check_hpu_cache(out, target, src_layers, report):
    """The Gaudi cache holds the same integers, scales cast to bf16 (by INC's default route through its fp16
    buffers), and the loss is reported."""
    cache = out / "cache-only"
    cache.mkdir()
    for f in CACHE[target]:
        shutil.copy(out / f, cache)
    cache_layers, fmt = _ir(cache)
    assert fmt == "hpu"
    for lname, a in src_layers.items():
        a, b = a.with_contiguous_groups(), cache_layers[lname]
        assert torch.equal(a.codes, b.codes) and torch.equal(a.zeros, b.zeros), lname
        cast = (a.scales.to(torch.float16) if target == "hpu-default" else a.scales).to(torch.bfloat16)
        assert b.scales.dtype == torch.bfloat16 and torch.equal(cast, b.scales), lname
        changed = int((cast.float() != a.scales.float()).sum())
        assert report.lossy_layers.get(lname, {}).get("scales_changed", 0) == changed, lname
    for p in cache.iterdir():
        p.unlink()
    cache.rmdir()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURES)
def test_lossless_or_refused(name, target, tmp_path):
    src = fixture_path(name)
    base = base_for(src)
    src_layers, src_format = _ir(src)
    expected_refusal = _expected_refusal(name, target, src_layers)
    if expected_refusal:
        with pytest.raises(RefusedConversion, match=expected_refusal):
            woqconv.convert(src, tmp_path / "out", to=target, base_model=base)
        assert not (tmp_path / "out").exists()
        assert not any(tmp_path.iterdir()), "a refused conversion must write nothing"
        return

    bf16_changes = any(bool((layer.scales.to(torch.bfloat16).float() != layer.scales.float()).any()) for layer in src_layers.values())
    if target in GAUDI and bf16_changes:
        with pytest.raises(RefusedConversion, match="`allow_bf16=True`"):
            woqconv.convert(src, tmp_path / "out", to=target, base_model=base)
        assert not any(tmp_path.iterdir())
    report = woqconv.convert(src, tmp_path / "out", to=target, allow_bf16=True, base_model=base)
    assert report.layers_converted == len(src_layers)
    assert report.lossless == (target not in GAUDI or not report.lossy_layers and not report.cast_tensors)
    out_layers, out_format = _ir(tmp_path / "out")
    assert out_format == READ_BACK_AS[target]
    # The loaders' contract: model.safetensors, an index, or (INC default) quantized_weight.pt.
    assert any((tmp_path / "out" / f).exists() for f in ("model.safetensors", "model.safetensors.index.json", "quantized_weight.pt"))
    assert sorted(out_layers) == sorted(src_layers)
    if target in GAUDI:
        _check_hpu_cache(tmp_path / "out", target, src_layers, report)
    for lname, a in src_layers.items():
        b = out_layers[lname]
        if target in NO_G_IDX:
            a = a.with_contiguous_groups()  # what the target can hold; proven equal below
        assert torch.equal(a.codes, b.codes), lname
        assert torch.equal(a.zeros, b.zeros), lname
        assert a.scales.dtype == b.scales.dtype and torch.equal(a.scales, b.scales), lname
        assert torch.equal(a.group_of_channel(), b.group_of_channel()), lname
        assert torch.equal(src_layers[lname].dequantize(), b.dequantize()), lname

    # Unquantized tensors are carried byte for byte; inc widens 16-bit floats to fp32, exactly (INC's
    # load assigns them into the user's original model, whatever its dtype).
    src_t, out_t = _tensors(src), _tensors(tmp_path / "out")
    with woqconv.open_checkpoint(src) as ckpt:
        owned = ckpt.owned_tensors()
    for t, v in src_t.items():
        if t not in owned:
            widened = target in ("inc", "hpu-default") and v.dtype in (torch.float16, torch.bfloat16) and not t.endswith(".scale_bf16_to_fp8")
            assert out_t[t].dtype == (torch.float32 if widened else v.dtype), t
            assert torch.equal(out_t[t].to(v.dtype), v) and (not widened or torch.equal(out_t[t], v.float())), t
            assert report.widened_tensors.get(t) == ({torch.float16: "F16", torch.bfloat16: "BF16"}[v.dtype] if widened else None), t

    # And back: A -> B -> A gives byte-identical qweight/qzeros/scales. A v1 source that holds
    # z = 0 (INC writes it modularly) cannot be written back as v1: woqconv refuses instead.
    if src_format not in woqconv.TARGETS:  # a read-only layout (INC non-optimum): nothing to go back to
        return
    if src_format == "gptq" and _expected_refusal(name, "gptq", src_layers):
        with pytest.raises(RefusedConversion, match="zero point 0"):
            woqconv.convert(tmp_path / "out", tmp_path / "back", to=src_format)
        return
    woqconv.convert(tmp_path / "out", tmp_path / "back", to=src_format)
    back_t = _tensors(tmp_path / "back")
    for t, v in src_t.items():
        if t.endswith((".qweight", ".qzeros", ".scales", ".weight_packed", ".weight_zero_point", ".weight_scale", ".weight_shape")):
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
