"""Target ``openvino``: real fixtures converted, read back by OpenVINO, and run by optimum-intel's OVModelForCausalLM.

Fixtures (one conversion each is ~10 s, most of it optimum-intel's export in .venv-ov, so a subset):
gptq v1 asym (AutoRound auto_gptq), gptq v2 sym (auto_round:gptqmodel, g128), 8-bit gptq v2 (u8 codes),
awq asym, INC default format, INC huggingface sym with fp32 unquantized tensors. Together they cover
every reader family, sym and asym, u4 and u8, fp16 and fp32 dense graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BASE, base_for, fixture_path
from loading import source_loader

import woqconv
from woqconv.errors import RefusedConversion, WoqconvError
from woqconv.formats.openvino.graph import decompressed_weight
from woqconv.ir import QuantLinear
from woqconv.runtime.openvino_check import decompressed_weights, fused_layers
from woqconv.runtime.runs import run_logits
from woqconv.runtime.worker import BASE_ENV

pytestmark = pytest.mark.loaders

CASES = [
    "ar-g32-asym-auto_gptq",
    "ar-w8-g32-asym-auto_round_gptqmodel",
    "ar-g32-asym-auto_awq",
    "inc-default-rtn-g32-asym",
    "inc-hf-rtn-g128-sym",
]
VIA_CLI = "ar-g32-asym-auto_awq"  # one conversion goes through the command line
LOGIT_TOL = 1e-3


def _convert(name: str, out: Path) -> dict:
    base = base_for(fixture_path(name))  # INC's default format records no architecture
    if name == VIA_CLI:
        proc = subprocess.run([sys.executable, "-m", "woqconv", "convert", str(fixture_path(name)), "-o", str(out), "--to", "openvino",
                               "--format", "json", *(["--base-model", str(base)] if base else [])], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)
    return woqconv.convert(fixture_path(name), out, to="openvino", base_model=base).to_dict()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every case converted (two at a time: each is mostly optimum-intel's export in its own process),
    while the sources run through their real loaders in another process (woqconv.runtime.worker, which
    gives INC's default format the checkpoint's own unquantized tensors)."""
    root = tmp_path_factory.mktemp("openvino")
    specs = [f"{source_loader(n)}:{fixture_path(n)}" for n in CASES]
    sources = subprocess.Popen([sys.executable, "-m", "woqconv.runtime.worker", str(root / "src"), "cpu", *specs],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, BASE_ENV: str(BASE)})
    with ThreadPoolExecutor(2) as pool:
        reports = dict(zip(CASES, pool.map(lambda n: _convert(n, root / n), CASES)))
    stdout, stderr = sources.communicate(timeout=1200)
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(CASES), stderr[-2000:]
    return {n: root / n for n in CASES}, reports, dict(zip(CASES, rows))


@pytest.fixture(scope="module")
def logits(converted, tmp_path_factory):
    """max |logit diff| against each source's real loader, for OVModelForCausalLM in two CPU profiles."""
    outs, _, src_rows = converted
    tmp = tmp_path_factory.mktemp("openvino-logits")
    ov_rows = run_logits(tmp, ["f32", "default"], [outs[n] for n in CASES])
    assert all("error" not in r for r in ov_rows), ov_rows
    by_profile = {"f32": ov_rows[: len(CASES)], "default": ov_rows[len(CASES):]}
    result = {}
    for i, name in enumerate(CASES):
        assert "error" not in src_rows[name], src_rows[name]
        src = torch.load(src_rows[name]["file"])
        result[name] = {p: (torch.load(rows[i]["file"]) - src).abs().max().item() for p, rows in by_profile.items()}
        result[name]["ppl"] = [by_profile["f32"][i]["ppl"], src_rows[name]["ppl"]]
        result[name].update(device=by_profile["default"][i]["device"], reference=f"{src_rows[name]['loader']} ({src_rows[name]['module']})")
    print("\nmax |logit diff| vs source:", json.dumps(result, indent=1))
    return result


@pytest.mark.parametrize("name", CASES)
def test_output_files_and_report(converted, name):
    outs, reports, _ = converted
    files = sorted(p.name for p in outs[name].iterdir())
    # The source's tokenizer and generation files, or its base model's when it records no architecture.
    carried = {p.name for p in (base_for(fixture_path(name)) or fixture_path(name)).iterdir()} | {p.name for p in fixture_path(name).iterdir()}
    for f in ("openvino_model.xml", "openvino_model.bin", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (f in files) == (f in carried or f.startswith("openvino_") or f == "config.json"), f
    assert not any(f.endswith(".safetensors") for f in files)
    config = json.loads((outs[name] / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    report = reports[name]
    assert report["target"] == "openvino" and report["lossless"] and report["layers_converted"] == 14


@pytest.mark.parametrize("name", CASES)
def test_weights_read_back_by_openvino_are_the_ir_dequantization(converted, name):
    """OpenVINO computes the decompression sub-graph in f32; its weights equal dequantize() bit for bit,
    its codes and zero points are the source's integers, and the CPU plugin fuses every layer."""
    outs, _, _ = converted
    got = decompressed_weights(outs[name])
    with woqconv.open_checkpoint(fixture_path(name)) as src:
        assert set(got) == {layer.name for layer in src.layers}
        for layer in src.iter_layers():
            d = got[layer.name]
            assert d.codes_type == ("u8" if layer.bits == 8 else "u4")
            assert d.weight.dtype == torch.float32
            assert torch.equal(d.weight.view(torch.int32), layer.dequantize().view(torch.int32)), layer.name
            flat = layer.with_contiguous_groups()
            assert torch.equal(d.codes, layer.codes.float())
            assert torch.equal(d.zeros, flat.zeros.float())
    fused, total = fused_layers(outs[name])
    assert fused == len(got) == total - 1  # every quantized linear; lm_head stays dense


@pytest.mark.parametrize("name", CASES)
def test_logits_match_the_source(logits, name):
    assert logits[name]["f32"] <= LOGIT_TOL, logits[name]
    # The CPU plugin's own defaults (bf16 where the CPU has it, int8 dynamic quantization of activations)
    # are reported, and held to the bf16 threshold woqconv verify uses for Gaudi.
    assert logits[name]["default"] <= 0.05, logits[name]


def test_the_same_conversion_writes_the_same_bytes(converted, tmp_path):
    """OpenVINO names unnamed nodes from a process-wide counter: the target names every node it builds, so a
    conversion repeated in a process that has built other models since writes the same bytes."""
    outs, _, _ = converted
    name = "ar-g32-asym-auto_gptq"
    _convert(name, tmp_path / "again")
    for f in ("openvino_model.xml", "openvino_model.bin"):
        assert (tmp_path / "again" / f).read_bytes() == (outs[name] / f).read_bytes(), f


def test_act_order_is_refused_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RefusedConversion, match="scattered act-order g_idx cannot be expressed in openvino"):
        woqconv.convert(fixture_path("inc-hf-gptq-actorder-g32-asym"), out, to="openvino")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_openvino_environment_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WOQCONV_OPENVINO_PYTHON", str(tmp_path / "no-python"))
    out = tmp_path / "out"
    with pytest.raises(WoqconvError, match="needs optimum-intel's environment"):
        woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), out, to="openvino")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bits,dtype", [(2, torch.float16), (4, torch.bfloat16), (8, torch.float32), (4, torch.float16)])
def test_decompression_subgraph_is_exact_for_every_scale_dtype(bits, dtype):
    """u4 (2- and 4-bit codes) and u8 codes with f16, bf16 and f32 scales, computed by OpenVINO."""
    import openvino as ov
    import openvino.opset13 as ops

    g = torch.Generator().manual_seed(bits)
    out, inp, group = 24, 64, 16
    layer = QuantLinear(
        "l", inp, out, bits, group,
        zeros=torch.randint(0, 2**bits, (out, inp // group), generator=g, dtype=torch.uint8),
        scales=(torch.rand(out, inp // group, generator=g) * 0.1 + 1e-3).to(dtype),
        codes=torch.randint(0, 2**bits, (out, inp), generator=g, dtype=torch.uint8),
    )
    node = decompressed_weight(layer, "l")
    probe = ov.Model([ops.result(node)], [], "probe")
    w = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({})[0]
    assert torch.equal(torch.from_numpy(np.array(w)).view(torch.int32), layer.dequantize().view(torch.int32))



def test_mixed_precision_keeps_each_layers_bits(tmp_path):
    """AutoRound's mixed checkpoint (8-bit down_proj, one g128 layer among 4-bit g32): every layer gets
    its own u4 or u8 constants, and OpenVINO's decompression equals dequantize() bit for bit."""
    name = "ar-mixed-g32-asym-auto_round_gptqmodel"
    woqconv.convert(fixture_path(name), tmp_path / "out", to="openvino")
    got = decompressed_weights(tmp_path / "out")
    with woqconv.open_checkpoint(fixture_path(name)) as src:
        assert {layer.bits for layer in src.layers} == {4, 8}
        for shell in src.layers:
            layer = src.read_layer(shell.name)
            assert got[shell.name].codes_type == ("u8" if layer.bits == 8 else "u4"), shell.name
            assert torch.equal(got[shell.name].weight.float(), layer.dequantize()), shell.name


def test_verify_runs_an_inc_default_source_through_its_base_model(converted):
    """INC's default format records no architecture: verify builds INC's original model from --base-model."""
    outs, _, _ = converted
    name = "inc-default-rtn-g32-asym"
    with pytest.raises(WoqconvError, match="`base_model=PATH_OR_REPO`"):
        woqconv.verify(outs[name], against=fixture_path(name))
    report = woqconv.verify(outs[name], against=fixture_path(name), base_model=BASE)
    assert report.passed, report.failures
    assert report.reference.startswith("inc-default:") and report.metrics["max_abs_logit_diff"] <= LOGIT_TOL
