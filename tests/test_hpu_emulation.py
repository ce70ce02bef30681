"""Emulated Gaudi: the CPU kernel of ``hpu::convert_from_uint4`` and INC's own ``load(..., device="hpu")`` path.

INC (neural-compressor-pt 3.10) runs in-process: everything ``emulated_hpu()`` patches is restored on exit,
which ``test_emulation_restores_everything`` checks after INC has run.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import safetensors.torch
import torch
from conftest import fixture_path
from safetensors.torch import load_file

from woqconv.runtime import hpu_emulation as hpu

pytestmark = pytest.mark.skipif(hpu.hpu_is_real(), reason="habana_frameworks present: nothing to emulate")

PROMPT = [[1, 5, 9, 33, 100, 200, 7, 8, 9, 10, 11, 12, 250, 3, 64, 128]]
SHIFTS = torch.arange(0, 32, 4)


def pack_along_out(codes: torch.Tensor) -> torch.Tensor:
    """``[rows, cols]`` 4-bit codes -> int32 ``[rows, cols/8]``, 8 sequential fields per word, LSB first."""
    words = (codes.to(torch.int64).reshape(codes.shape[0], -1, 8) << SHIFTS).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def plain_dequant(codes, zeros, scales, g_idx) -> torch.Tensor:
    """W_T[i, o] = (q[i, o] - z[g(i), o]) * s[g(i), o], one element at a time."""
    n_in, n_out = codes.shape
    out = torch.empty(n_in, n_out)
    for i in range(n_in):
        g = int(g_idx[i])
        for o in range(n_out):
            out[i, o] = (int(codes[i, o]) - int(zeros[g, o])) * float(scales[g, o])
    return out


# --- the op -----------------------------------------------------------------------------------------------------


def test_op_hand_computed():
    hpu.register_convert_from_uint4()
    # in-channel 0: codes 1..8 on out-channels 0..7; in-channel 1: code 15 on out-channel 7 only (sign bit set)
    qweight = torch.tensor([[0x87654321 - 2**32], [0xF0000000 - 2**32]], dtype=torch.int32)
    zeros = torch.tensor([[0x43218888]], dtype=torch.int32)  # raw z = 8,8,8,8,1,2,3,4 (one group of 2 in-channels)
    scales = torch.tensor([[0.5, 0.5, 1, 1, 2, 2, 0.25, 0.25]], dtype=torch.bfloat16)
    expected = torch.tensor([[-3.5, -3, -5, -4, 8, 8, 1, 1],
                             [-4, -4, -8, -8, -2, -4, -0.75, 2.75]])
    assert torch.equal(pack_along_out(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 0, 15]])), qweight)
    for dtype in (torch.float32, torch.bfloat16):
        got = torch.ops.hpu.convert_from_uint4(qweight, scales, zeros, dtype)
        assert got.dtype == dtype and torch.equal(got.float(), expected)
    # the 5-argument call INC makes when is_hpex_support_g_idx() is True, with g_idx None or given
    assert torch.equal(torch.ops.hpu.convert_from_uint4(qweight, scales, zeros, torch.float32, None), expected)
    g_idx = torch.zeros(2, dtype=torch.int32)
    assert torch.equal(torch.ops.hpu.convert_from_uint4(qweight, scales, zeros, torch.float32, g_idx), expected)


# out is a multiple of 32 because INC's packer needs it (it truncates otherwise)
@pytest.mark.parametrize("seed, n_in, n_out, group_size, scattered", [(0, 64, 32, 32, False), (1, 96, 64, 32, False),
                                                                      (2, 128, 32, 64, False), (3, 64, 32, 16, True)])
def test_op_matches_plain_dequant(seed, n_in, n_out, group_size, scattered):
    from neural_compressor.torch.algorithms.weight_only.modules import (
        HPUWeightOnlyLinear,
    )

    hpu.register_convert_from_uint4()
    gen = torch.Generator().manual_seed(seed)
    n_groups = n_in // group_size
    codes = torch.randint(0, 16, (n_in, n_out), generator=gen)
    zeros = torch.randint(0, 16, (n_groups, n_out), generator=gen)
    scales = (torch.rand(n_groups, n_out, generator=gen) * 0.1 + 1e-3).to(torch.bfloat16)
    g_idx = torch.arange(n_in) // group_size
    if scattered:
        g_idx = g_idx[torch.randperm(n_in, generator=gen)]
    qweight, qzeros = pack_along_out(codes), pack_along_out(zeros)
    # the test's packer is INC's HPU packer (HPUWeightOnlyLinear.pack_tensor uses no instance state)
    assert torch.equal(qweight, HPUWeightOnlyLinear.pack_tensor(None, codes))
    want = plain_dequant(codes, zeros, scales, g_idx)
    g_idx = g_idx.to(torch.int32)
    got = torch.ops.hpu.convert_from_uint4(qweight, scales, qzeros, torch.float32, g_idx if scattered else None)
    assert torch.equal(got, want)
    got = torch.ops.hpu.convert_from_uint4(qweight, scales, qzeros, torch.bfloat16, g_idx)
    assert torch.equal(got, want.to(torch.bfloat16))


# --- INC's own HPU path ------------------------------------------------------------------------------------------


def _safetensors_header(path) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


def _inc_load(path, device, dtype):
    from neural_compressor.torch.quantization import load

    return load(str(path), format="huggingface", device=device, torch_dtype=dtype)


def _forbid_repacking(monkeypatch) -> None:
    from neural_compressor.torch.algorithms.weight_only.modules import (
        HPUWeightOnlyLinear,
        INCWeightOnlyLinear,
    )

    def no_repack(*args, **kwargs):
        raise AssertionError("INC unpacked/repacked instead of reading its HPU cache")

    monkeypatch.setattr(HPUWeightOnlyLinear, "pack", no_repack)
    monkeypatch.setattr(INCWeightOnlyLinear, "unpack", no_repack)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits.float()


@pytest.mark.parametrize("name", ["inc-hf-rtn-g32-asym", "inc-hf-rtn-g128-sym"])
def test_inc_hpu_load_writes_cache_then_reads_it(name, tmp_path, monkeypatch, record_property):
    from neural_compressor.torch.algorithms.weight_only.modules import (
        HPUWeightOnlyLinear,
    )

    ckpt = tmp_path / name
    shutil.copytree(fixture_path(name), ckpt)
    files_before = {p.name for p in ckpt.iterdir()}
    with hpu.emulated_hpu():
        first = _inc_load(ckpt, "hpu", torch.bfloat16)
        first_logits = _logits(first)
    assert sum(isinstance(m, HPUWeightOnlyLinear) for m in first.modules()) == 14  # 2 layers x 7 linears
    # The cache goes into the directory of the resolved model.safetensors, i.e. the checkpoint dir itself.
    assert {p.name for p in ckpt.iterdir()} == files_before | {"hpu_model.safetensors"}

    header = _safetensors_header(ckpt / "hpu_model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    layer = "model.layers.0.mlp.down_proj"  # in 384, out 128
    n_groups = 384 // (32 if "g32" in name else 128)
    assert {k[len(layer) + 1:]: (v["dtype"], v["shape"]) for k, v in header.items() if k.startswith(layer + ".")} == {
        "qweight": ("I32", [384, 16]), "qzeros": ("I32", [n_groups, 16]),
        "scales": ("BF16", [n_groups, 128]), "scale_bf16_to_fp8": ("BF16", [1])}  # no bias, no g_idx
    assert header["lm_head.weight"]["dtype"] == header["model.norm.weight"]["dtype"] == "BF16"
    # INC unpacks the GPTQ-v1 source and repacks: same codes along out, raw zero points, scales rounded to bf16.
    src, cache = load_file(ckpt / "model.safetensors"), load_file(ckpt / "hpu_model.safetensors")
    q_src = (src[layer + ".qweight"].unsqueeze(1) >> SHIFTS.view(1, 8, 1)) & 15  # packed along in
    assert torch.equal(hpu.unpack_sequential_uint4(cache[layer + ".qweight"]), q_src.reshape(384, 128))
    z_src = hpu.unpack_sequential_uint4(src[layer + ".qzeros"])  # stores z - 1, z = 0 as 0xF
    assert torch.equal(hpu.unpack_sequential_uint4(cache[layer + ".qzeros"]), (z_src + 1) % 16)
    assert torch.equal(cache[layer + ".scales"], src[layer + ".scales"].to(torch.bfloat16))

    # Second load: INC must take hpu_model.safetensors as is; unpacking or repacking would fail.
    _forbid_repacking(monkeypatch)
    with hpu.emulated_hpu():
        second = _inc_load(ckpt, "hpu", torch.bfloat16)
        second_logits = _logits(second)
    monkeypatch.undo()
    assert torch.equal(second_logits, first_logits)

    reference = _logits(_inc_load(ckpt, "cpu", torch.float32))
    max_abs = (first_logits - reference).abs().max().item()
    top1 = (first_logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    record_property("max_abs_diff", max_abs)
    record_property("top1_agreement", top1)
    assert max_abs < 2e-2 and top1 == 1.0  # bf16 activations and bf16 scales; measured ~6e-3


@pytest.mark.parametrize("support_g_idx, ok", [(True, True), (False, False)])
def test_inc_hpu_act_order_depends_on_g_idx_support(support_g_idx, ok, tmp_path):
    """A scattered g_idx is kept in the cache; only the 5-argument op call applies it."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture_path("inc-hf-gptq-actorder-g32-asym"), ckpt)
    with hpu.emulated_hpu(support_g_idx=support_g_idx):
        logits = _logits(_inc_load(ckpt, "hpu", torch.bfloat16))
    header = _safetensors_header(ckpt / "hpu_model.safetensors")
    assert header["model.layers.0.self_attn.q_proj.g_idx"]["dtype"] == "I32"
    reference = _logits(_inc_load(ckpt, "cpu", torch.float32))
    assert ((logits - reference).abs().max().item() < 2e-2) is ok


@pytest.mark.parametrize("name, cache, sharded", [
    ("inc-default-rtn-g32-asym", "quantized_hpu_weight.pt", False),
    ("inc-default-sharded-gptq-actorder-g32-asym", "quantized_hpu_weight.safetensors", True),
])
def test_inc_hpu_default_format_cache(name, cache, sharded, tmp_path, monkeypatch):
    """INC's default format: the cache is a whole-model state dict; the sharded one is read with device="hpu"."""
    from neural_compressor.torch.quantization import load
    from transformers import AutoModelForCausalLM

    if not fixture_path(name).is_dir():
        pytest.skip(f"fixture {name} not present")
    ckpt = tmp_path / name
    shutil.copytree(fixture_path(name), ckpt)

    def inc_load(device):
        base = AutoModelForCausalLM.from_pretrained(fixture_path("base-fp16"), dtype=torch.float32)
        return load(str(ckpt), original_model=base, format="default", device=device, sharded_checkpoints=sharded)

    reference = _logits(inc_load("cpu"))
    with hpu.emulated_hpu():
        first = _logits(inc_load("hpu"))
    assert (ckpt / cache).is_file()
    _forbid_repacking(monkeypatch)
    with hpu.emulated_hpu():
        second = _logits(inc_load("hpu"))
    monkeypatch.undo()
    assert torch.equal(first, second)
    assert (first - reference).abs().max().item() < 1e-2  # fp32 activations; only the bf16 scales differ
    if sharded:
        # INC bug: the sharded reader loads every *.safetensors in the directory, the HPU cache included.
        with pytest.raises(RuntimeError, match="size mismatch for qweight"):
            inc_load("cpu")


# --- the patches (last, after INC has run) -------------------------------------------------------------------------


def _hpu_to_fails() -> bool:
    try:
        torch.zeros(1).to("hpu")
    except (ModuleNotFoundError, RuntimeError):
        return True
    return False


def test_emulation_restores_everything(tmp_path):
    from neural_compressor.torch.algorithms.weight_only import modules
    from neural_compressor.torch.utils import environ

    def state():
        return (environ.is_hpex_available(), modules.is_hpex_support_g_idx, torch.Tensor.__dict__.get("to"),
                safetensors.torch.load_file)

    before = state()
    assert hpu.hpu_label() == hpu.EMULATED_LABEL and _hpu_to_fails() and before[0] is False
    with hpu.emulated_hpu(support_g_idx=False) as label:
        assert label == hpu.EMULATED_LABEL
        assert torch.zeros(1).to("hpu").device.type == "cpu"
        assert torch.nn.Linear(2, 2).to(torch.device("hpu:0"), torch.bfloat16).weight.dtype == torch.bfloat16
        assert environ.is_hpex_available() and modules.is_hpex_support_g_idx() is False
        safetensors.torch.save_file({"x": torch.ones(2)}, tmp_path / "x.safetensors")
        assert safetensors.torch.load_file(tmp_path / "x.safetensors", device="hpu")["x"].device.type == "cpu"
        with hpu.emulated_hpu() as inner:  # nested: the inner exit restores the outer's patches
            assert inner == label and modules.is_hpex_support_g_idx() is True
        assert modules.is_hpex_support_g_idx() is False and torch.zeros(1).to("hpu").device.type == "cpu"
    with pytest.raises(KeyError), hpu.emulated_hpu():
        raise KeyError("restored on error too")
    assert state() == before
    assert _hpu_to_fails()
