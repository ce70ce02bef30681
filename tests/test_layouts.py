"""Layouts no single library fixture covers: sharded checkpoints, block-uniform g_idx, GPTQModel's v1
dialect, and device selection. Each starts from a real fixture."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file, save_file

import woqconv
from woqconv.errors import WoqconvError
from woqconv.runtime import select_device


def _shard(src, dst):
    """Split a fixture into two shards with an index, the way transformers lays them out."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    first = [n for n in names if ".layers.0." in n or "embed" in n]
    parts = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": [n for n in names if n not in first]}
    weight_map = {}
    for fname, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, dst / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return tensors


@pytest.mark.parametrize("target", ["awq", "gptq-v2"])
def test_sharded_source_gives_sharded_output(tmp_path, target):
    src = tmp_path / "sharded"
    _shard(fixture_path("ar-g32-asym-auto_gptq"), src)
    assert woqconv.inspect(src).shards == 2
    woqconv.convert(src, tmp_path / "out", to=target)
    woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "single", to=target)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    merged = {}
    for f in set(index["weight_map"].values()):
        part = load_file(tmp_path / "out" / f)
        assert all(index["weight_map"][k] == f for k in part)
        merged.update(part)
    single = load_file(tmp_path / "single" / "model.safetensors")
    assert sorted(merged) == sorted(single) == sorted(index["weight_map"])
    for k in single:
        assert torch.equal(merged[k], single[k]), k
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())


def test_block_uniform_g_idx_is_relabelled_exactly_for_awq(tmp_path):
    """Relabel the groups of a real GPTQ checkpoint (reverse their order, permuting scale/zero rows to
    match): same weights, block-uniform g_idx. AWQ must get back exactly the original tensors."""
    src = fixture_path("ar-g32-asym-auto_gptq")
    relabelled = tmp_path / "relabelled"
    shutil.copytree(src, relabelled)
    tensors = load_file(relabelled / "model.safetensors")
    for name in [n[: -len(".g_idx")] for n in tensors if n.endswith(".g_idx")]:
        groups = tensors[f"{name}.scales"].shape[0]
        perm = torch.arange(groups - 1, -1, -1)  # block b now uses group perm[b]
        inv = torch.argsort(perm)
        tensors[f"{name}.g_idx"] = perm[tensors[f"{name}.g_idx"].long()].to(torch.int32)
        tensors[f"{name}.scales"] = tensors[f"{name}.scales"][inv].contiguous()
        tensors[f"{name}.qzeros"] = tensors[f"{name}.qzeros"][inv].contiguous()
    save_file(tensors, relabelled / "model.safetensors", metadata={"format": "pt"})

    report = woqconv.inspect(relabelled)
    assert report.g_idx == "block-uniform"
    with woqconv.open_checkpoint(src) as a, woqconv.open_checkpoint(relabelled) as b:
        for la, lb in zip(a.iter_layers(), b.iter_layers()):
            assert torch.equal(la.dequantize(), lb.dequantize())
    conv = woqconv.convert(relabelled, tmp_path / "awq", to="awq")
    assert all(c == ["block-uniform g_idx relabelled (group rows permuted)"] for c in conv.layer_changes.values())
    ours = load_file(tmp_path / "awq" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g32-asym-auto_awq") / "model.safetensors")
    for k in theirs:
        if k.endswith((".qweight", ".qzeros", ".scales")):
            assert torch.equal(ours[k], theirs[k]), k
    # gptq keeps the g_idx as it is and says so in the config.
    woqconv.convert(relabelled, tmp_path / "gptq", to="gptq")
    cfg = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert cfg["desc_act"] is True


def test_gptqmodel_v1_word_dialect_is_decoded_by_word_arithmetic(tmp_path):
    """GPTQModel saves v1 by subtracting 0x11111111 from each qzeros word (its own converter is used
    here), so z = 0 borrows from the neighbours. woqconv must read it back exactly."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

    v2 = fixture_path("ar-zp0-g32-asym-auto_round_gptqmodel")  # holds z = 0 groups
    dst = tmp_path / "gptqmodel-v1"
    shutil.copytree(v2, dst)
    tensors = load_file(dst / "model.safetensors")
    for name in [n[: -len(".qzeros")] for n in tensors if n.endswith(".qzeros")]:
        out_f = tensors[f"{name}.scales"].shape[1]
        in_f = tensors[f"{name}.qweight"].shape[0] * 8
        m = TorchLinear(bits=4, group_size=32, sym=False, desc_act=False, in_features=in_f, out_features=out_f, pack_dtype=torch.int32)
        m.qzeros.data = tensors[f"{name}.qzeros"].clone()
        convert_gptq_v2_to_v1_format_module(m, QuantizeConfig(bits=4, group_size=32))
        tensors[f"{name}.qzeros"] = m.qzeros.data.clone()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "sym": False, "desc_act": False,
        "checkpoint_format": "gptq", "meta": {"quantizer": ["gptqmodel:7.7.0"]}, "pack_dtype": "int32",
    }
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "quantization_config.json").unlink(missing_ok=True)

    with woqconv.open_checkpoint(dst) as a, woqconv.open_checkpoint(v2) as b:
        for la, lb in zip(a.iter_layers(), b.iter_layers()):
            assert torch.equal(la.zeros, lb.zeros), la.name
            assert torch.equal(la.dequantize(), lb.dequantize())
    # A plain modular v1 reading of the same file is wrong in the neighbours of z = 0.
    with woqconv.open_checkpoint(dst, zero_point_convention="v1") as a, woqconv.open_checkpoint(v2) as b:
        assert any(not torch.equal(la.zeros, lb.zeros) for la, lb in zip(a.iter_layers(), b.iter_layers()))


def test_device_selection_on_this_machine():
    device = select_device("auto")
    assert device.kind in ("hpu", "cuda", "cpu") and device.reason
    assert select_device("cpu").kind == "cpu"
    import importlib.util

    if importlib.util.find_spec("habana_frameworks") is None:
        with pytest.raises(WoqconvError, match="hpu requested"):
            select_device("hpu")
    with pytest.raises(WoqconvError, match="device must be one of"):
        select_device("tpu")
