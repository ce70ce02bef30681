"""The dense target: the producers' checkpoints written as plain models, loaded by plain transformers, equal to
``dequantize()`` bit for bit in float32; 16-bit outputs equal the producers' own 16-bit dequantization and say
what the rounding changed; verify checks them against their source and runs both."""

from __future__ import annotations

import json

import pytest
import torch
from cli_in_process import run_cli
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file
from test_compressed_tensors import _decompressed

from conftest import BASE, fixture_path

import woqconv
from woqconv.formats.compressed_tensors import scheme_of
from woqconv.formats.dense import DenseTarget, largest_weight
from woqconv.ir import QuantLinear
from woqconv.source import open_checkpoint

# One of each reader: GPTQ (asym, v1 fields), act-order GPTQ (INC's huggingface format), AWQ, AutoRound 3-bit,
# compressed-tensors (llm-compressor, 8-bit), bitsandbytes NF4 and FP4 (codebooks), and an OpenVINO IR.
SOURCES = ["ar-g32-asym-auto_gptq", "inc-hf-gptq-actorder-g32-asym", "ar-g128-sym-auto_awq", "ar-w3-g32-asym-auto_round",
           "llmc-w8a16-sym-g128", "bnb-nf4-bf16", "bnb-fp4-fp16", "ov-optimum-llama-int4-asym-g64-r06"]


def _dequantized(name: str) -> dict[str, torch.Tensor]:
    with open_checkpoint(fixture_path(name)) as src:
        return {layer.name: layer.dequantize() for layer in src.iter_layers()}


@pytest.fixture(scope="module")
def float32_outputs(tmp_path_factory):
    """Each source as a float32 dense model (the default dtype), with the conversion's report."""
    root = tmp_path_factory.mktemp("dense32")
    return {name: (root / name, woqconv.convert(fixture_path(name), root / name, to="dense")) for name in SOURCES}


@pytest.mark.parametrize("name", SOURCES)
def test_float32_loads_as_plain_transformers_and_equals_dequantize(name, float32_outputs):
    from transformers import AutoModelForCausalLM

    out, report = float32_outputs[name]
    assert report.lossless and not report.rounded and report.target == "dense"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert not [f for f in out.iterdir() if f.name in ("quantize_config.json", "quantization_config.json", "openvino_model.xml")]
    model = AutoModelForCausalLM.from_pretrained(out)  # the file's own dtype: no quantizer, no dtype asked
    assert getattr(model.config, "quantization_config", None) is None
    modules = dict(model.named_modules())
    expected = _dequantized(name)
    assert len(expected) >= 14
    for layer, weight in expected.items():
        linear = modules[layer]
        assert type(linear) is torch.nn.Linear, (layer, type(linear))  # a plain model: no quantized module
        assert linear.weight.dtype == torch.float32
        assert torch.equal(linear.weight.detach().view(torch.int32), weight.view(torch.int32)), layer
    # Carried tensors: widened exactly where 16-bit; a producer's own per-layer tensors (INC's scale_bf16_to_fp8)
    # left out, so that the plain model has no unexpected key.
    keys = set(load_file(out / "model.safetensors"))
    assert set(report.widened_tensors) <= keys and not [k for k in keys if k.endswith(".scale_bf16_to_fp8")]
    assert len(report.tensors_dropped) == (14 if name.startswith("inc-") else 0)
    if name.startswith("inc-"):  # INC writes a zero bias for every linear; llama's have none
        assert report.layer_changes == {layer: ["zero bias dropped (the architecture's linear has none)"] for layer in expected}
    # No key the plain model does not have (a zero bias where the architecture has none is dropped). An OpenVINO
    # source lacks its norms of exactly 1.0, which OpenVINO folds away and transformers initialises to 1.0.
    assert keys <= set(model.state_dict()) | {"lm_head.weight"}, keys - set(model.state_dict())


@pytest.mark.parametrize("name, dtype", [("llmc-w4a16-asym-g32", "float16"), ("llmc-w8a16-sym-g128", "float16"),
                                         ("ct-autoawq-g32-asym", "float16")])
def test_float16_equals_compressed_tensors_own_decompression(name, dtype, tmp_path):
    # compressed-tensors decompresses in the scales' dtype (fp16): its weights are the fp32 products rounded
    # once, what the dense target writes, and the report counts exactly the weights that rounding changed.
    path = fixture_path(name)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    report = woqconv.convert(path, tmp_path / "out", to="dense", dtype=dtype)
    written = load_file(tmp_path / "out" / "model.safetensors")
    exact = _dequantized(name)
    groups_of = {p: scheme_of(p, qc["config_groups"], qc.get("ignore") or []) for p in exact}
    theirs = _decompressed(path, QuantizationConfig.model_validate(qc), groups_of)
    assert not report.lossless and sorted(report.rounded) == sorted(exact)
    for layer, weight in exact.items():
        mine = written[f"{layer}.weight"]
        assert mine.dtype == theirs[layer].dtype == torch.float16 and torch.equal(mine, theirs[layer]), layer
        changed = int((mine.float() != weight).sum())
        stats = report.rounded[layer]
        assert stats["values_changed"] == changed and stats["values_total"] == weight.numel(), layer
        assert stats["max_abs"] == float((mine.float() - weight).abs().max()), layer


@pytest.mark.parametrize("name", ["bnb-nf4-bf16", "bnb-fp4-fp16"])
def test_16_bit_equals_bitsandbytes_own_dequantization(name, tmp_path):
    import bitsandbytes.functional as F

    sd = load_file(fixture_path(name) / "model.safetensors")
    with open_checkpoint(fixture_path(name)) as src:
        dtype = str(src.layers[0].dtype).removeprefix("torch.")
        names = [layer.name for layer in src.layers]
    woqconv.convert(fixture_path(name), tmp_path / "out", to="dense", dtype=dtype)
    written = load_file(tmp_path / "out" / "model.safetensors")
    for layer in names:
        p = layer + ".weight."
        state = F.QuantState.from_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, device="cpu")
        ref = F.dequantize_4bit(sd[layer + ".weight"].view(torch.uint8), state)
        mine = written[f"{layer}.weight"]
        assert mine.dtype == ref.dtype
        # bitsandbytes' CPU kernel signs some zeros of FP4 by the index's top bit (test_codebook.py): values, then bits.
        assert torch.equal(mine, ref), layer
        assert bool(((mine.view(torch.int16) == ref.view(torch.int16)) | (ref == 0)).all()), layer


def test_dry_run_measures_the_rounding_and_writes_nothing(tmp_path):
    src = fixture_path("ar-g32-asym-auto_gptq")
    planned = woqconv.convert(src, tmp_path / "dry", to="dense", dtype="bfloat16", dry_run=True)
    written = woqconv.convert(src, tmp_path / "out", to="dense", dtype="bfloat16")
    assert not (tmp_path / "dry").exists()
    assert planned.rounded == written.rounded and len(written.rounded) == 14
    assert all(v["dtype"] == "bfloat16" and 0 < v["rel_fro"] < 2 ** -8 for v in written.rounded.values())


def test_cli_reports_the_rounding_per_layer_and_refuses_dtype_elsewhere(tmp_path):
    src = fixture_path("ar-g32-asym-auto_gptq")
    r = run_cli("convert", src, "-o", tmp_path / "out", "--to", "dense", "--dtype", "float16", "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["lossless"] is False and len(report["rounded"]) == 14
    r = run_cli("convert", src, "-o", tmp_path / "text", "--to", "dense", "--dtype", "float16")
    assert r.returncode == 0 and "rounded to float16" in r.stdout and "rounding to float16 per layer" in r.stdout, r.stdout
    r = run_cli("convert", src, "-o", tmp_path / "awq", "--to", "awq", "--dtype", "float16")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--to dense" in r.stderr, r.stderr
    assert not (tmp_path / "awq").exists()


def test_a_product_beyond_float16_is_refused():
    big = QuantLinear("m", 64, 8, 4, 32, zeros=torch.full((8, 2), 8, dtype=torch.uint8),
                      scales=torch.full((8, 2), 1e4, dtype=torch.float32))
    assert largest_weight(big) == 8e4  # |(0 - 8) * 1e4|: beyond float16 (65504), well inside bfloat16
    assert "beyond float16" in DenseTarget().configured(dtype="float16").prepare(big).refusal
    assert DenseTarget().configured(dtype="bfloat16").prepare(big).refusal is None


@pytest.mark.slow
def test_verify_runs_dense_outputs_beside_their_source(tmp_path):
    # The GPTQ source runs in transformers (gptqmodel's torch kernel, which dequantizes in the scales' fp16):
    # the float16 output gives its logits exactly, the float32 one within the lossless limit.
    src = fixture_path("ar-g32-asym-auto_gptq")
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        woqconv.convert(src, out, to="dense", dtype=dtype)
        report = woqconv.verify(out, against=src, run=dtype == "float16")  # the float32 run: test_dense's loads above
        assert report.passed, report.failures
        assert report.format == "dense" and report.metrics["layers_compared"] == 14
        weights = [c for c in report.checks if c.check == "weights"]
        assert len(weights) == 14 and all((c.accepted is None) == (dtype == "float32") for c in weights)
    assert report.loader == "transformers" and report.metrics["precision"] == "fp16"
    assert report.metrics["max_abs_logit_diff"] == 0.0  # gptqmodel's kernel dequantizes into the fp16 scales' dtype too
    with pytest.raises(woqconv.WoqconvError, match="against"):
        woqconv.verify(tmp_path / "float32")


def test_inc_default_source_takes_its_architecture_from_the_base_model(tmp_path):
    out = tmp_path / "out"
    report = woqconv.convert(fixture_path("inc-default-rtn-g32-asym"), out, to="dense", base_model=BASE)
    assert report.lossless and (out / "config.json").exists()
    written = load_file(out / "model.safetensors")
    for layer, weight in _dequantized("inc-default-rtn-g32-asym").items():
        assert torch.equal(written[f"{layer}.weight"], weight), layer
