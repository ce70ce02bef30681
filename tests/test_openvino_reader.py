"""OpenVINO IR sources: the NNCF-compressed fixture (INT4_ASYM group 64, ratio 0.8, INT8_ASYM backup) is read,
inspected with its 4/8-bit mix, and converted to gptq / gptq-v2 with every layer at its own precision.

"Same weights" is checked against OpenVINO itself: each compressed weight's decompression sub-graph is compiled
on the CPU plugin and its output compared bit for bit with woqconv's dequantization; the gptq-v2 output is then
loaded by GPTQModel and its logits compared with the OpenVINO model's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cli_in_process import run_cli
from conftest import BASE, MANIFEST, fixture_path

ov = pytest.importorskip("openvino")

import woqconv  # noqa: E402
from woqconv import FormatError  # noqa: E402

NAME = "ov-nncf-int4-asym-g64-r08"
ENTRY = MANIFEST[NAME]
FOUR_BIT = ENTRY["compressed"]["u4 group 64"]
DENSIFIED = ["lm_head", "model.embed_tokens"]  # u8 in the IR, dense in Hugging Face checkpoints
EIGHT_BIT = sorted(set(ENTRY["compressed"]["u8 per-channel"]) - set(DENSIFIED))
PROMPT = [[1, 5, 9, 33, 100, 200, 7, 8, 9, 10, 11, 12, 250, 3, 64, 128]]  # tests/load_logits.py's
# OpenVINO's CPU plugin quantizes activations to int8 (groups of 32) before a compressed-weight MatMul unless told
# not to: with it on, its logits differ from an fp32 model of the same weights by 1.1e-2 here; off, by 4e-7.
OV_EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
# GPTQModel loads in fp16 (tests/load_logits.py): the dense fp32 embedding and lm_head OpenVINO computes round
# to fp16 (the norms are fp16 values already): 2.6e-4 here (logits up to 0.91).
TOL_GPTQMODEL = 1e-3


def _layers(path) -> dict:
    with woqconv.open_checkpoint(path) as src:
        return {layer.name: layer for layer in src.iter_layers()}


def _dense(path, names) -> dict[str, torch.Tensor]:
    with woqconv.open_checkpoint(path) as src:
        return {n: src.ckpt.read(n) for n in names}


@pytest.fixture(scope="module")
def openvino_weights() -> dict[str, np.ndarray]:
    """Every compressed weight as OpenVINO's CPU plugin decompresses it: the input its MatMul (or Gather)
    receives, computed by one compiled model whose outputs are those inputs."""
    model = ov.Core().read_model(str(fixture_path(NAME) / "openvino_model.xml"))
    names, outputs = [], []
    for op in model.get_ordered_ops():
        et = op.get_output_element_type(0).get_type_name()
        if op.get_type_name() != "Constant" or et not in ("u4", "u8") or not op.get_friendly_name().endswith(".weight"):
            continue
        node = op
        while True:
            (target,) = node.output(0).get_target_inputs()
            if target.get_node().get_type_name() in ("MatMul", "Gather"):
                break
            node = target.get_node()
        names.append(op.get_friendly_name()[len("self."):-len(".weight")])
        outputs.append(node.output(0))
    result = ov.Core().compile_model(ov.Model(outputs, []), "CPU", OV_EXACT)({})
    return {n: np.asarray(result[i]).astype(np.float32) for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def openvino_logits() -> torch.Tensor:
    compiled = ov.Core().compile_model(str(fixture_path(NAME) / "openvino_model.xml"), "CPU", OV_EXACT)
    ids = np.array(PROMPT, dtype=np.int64)
    return torch.from_numpy(np.asarray(compiled({"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    for to in ("gptq", "gptq-v2"):
        woqconv.convert(fixture_path(NAME), root / to, to=to, base_model=BASE)  # ov.save_model writes no config.json
    return {to: root / to for to in ("gptq", "gptq-v2")}


def test_inspect_shows_the_nncf_mix():
    r = woqconv.inspect(fixture_path(NAME))
    assert (r.format, r.bits, r.group_size, r.zero_point_convention, r.quantized_modules) == ("openvino", 4, 64, "v2", 14)
    four = [p for p in r.precisions if p["bits"] == 4]
    eight = [p for p in r.precisions if p["bits"] == 8]
    assert [(p["group_size"], p["sym"], p["names"]) for p in four] == [(64, False, FOUR_BIT)]
    # INT8 per channel: one group per row. Each layer's group size is its in_features (128, or 384 for
    # down_proj); the summary counts them as one precision, as the config the gptq targets write does.
    assert [(p["group_size"], p["sym"], p["names"]) for p in eight] == [(-1, False, EIGHT_BIT)]
    by_name = {layer.name: layer for layer in r.layers}
    assert all(by_name[n].group_size == by_name[n].in_features and by_name[n].per_channel for n in EIGHT_BIT)
    assert not any(by_name[n].per_channel for n in FOUR_BIT)
    text = run_cli("inspect", fixture_path(NAME), env={"COLUMNS": "300"}).stdout
    assert "8-bit per-channel asym: 7 layers" in text and "g384" not in text
    assert any("model.embed_tokens, lm_head" in w for w in r.warnings)


def test_weights_equal_openvinos_own_decompression(openvino_weights):
    layers = _layers(fixture_path(NAME))
    assert sorted(layers) == sorted(FOUR_BIT + EIGHT_BIT)
    assert sorted(openvino_weights) == sorted(FOUR_BIT + EIGHT_BIT + DENSIFIED)
    f16_differs = 0
    for name, layer in layers.items():
        assert layer.bits == (4 if name in FOUR_BIT else 8), name
        w = layer.dequantize()
        # OpenVINO's CPU plugin computes (q - z) * s in fp32 (the graph's f16 ops are not rounded to f16):
        # bit-exact with the IR's fp32 dequantization.
        assert torch.equal(w, torch.from_numpy(openvino_weights[name])), name
        f16_differs += int((w.half().float() != w).sum())
    assert f16_differs > 0  # so an f16-rounded comparison would have been the wrong reference
    dense = _dense(fixture_path(NAME), [f"{n}.weight" for n in DENSIFIED])
    for name in DENSIFIED:
        assert torch.equal(dense[f"{name}.weight"], torch.from_numpy(openvino_weights[name])), name


def test_gptq_outputs_keep_each_layers_precision_and_weights(converted):
    src = _layers(fixture_path(NAME))
    dense_names = ["model.norm.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight", "model.embed_tokens.weight"]
    src_dense = _dense(fixture_path(NAME), dense_names)
    for to, out in converted.items():
        got = _layers(out)
        assert sorted(got) == sorted(src), to
        for name, layer in src.items():
            assert (got[name].bits, got[name].group_size) == (layer.bits, layer.group_size), (to, name)
            assert torch.equal(got[name].dequantize(), layer.dequantize()), (to, name)
            assert torch.equal(got[name].scales, layer.scales) and torch.equal(got[name].zeros, layer.zeros), (to, name)
        out_dense = _dense(out, dense_names)
        assert all(torch.equal(out_dense[n], src_dense[n]) for n in dense_names), to
        qc = json.loads((out / "quantize_config.json").read_text())
        assert (qc["bits"], qc["group_size"], qc["sym"]) == (4, 64, False)
        ((pattern, override),) = qc["dynamic"].items()
        assert override == {"bits": 8, "group_size": -1, "sym": False}
        assert all(n.replace(".", "\\.") in pattern for n in EIGHT_BIT) and not any(n.replace(".", "\\.") in pattern for n in FOUR_BIT)


def test_every_tensor_is_found_the_ir_as_a_dense_transformers_model_computes_openvinos_logits(openvino_logits):
    """Norm weights have no names in the IR (found by their consumer): a transformers model built from the
    config with woqconv's dequantized weights and dense tensors must miss nothing and compute OpenVINO's logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    state = {}
    with woqconv.open_checkpoint(fixture_path(NAME)) as src:
        owned = src.owned_tensors()
        state = {f"{layer.name}.weight": layer.dequantize() for layer in src.iter_layers()}
        state |= {t: src.ckpt.read(t) for t in src.ckpt.tensor_names if t not in owned}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BASE), dtype=torch.float32).eval()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        got = model(torch.tensor(PROMPT)).logits
    diff = float((got - openvino_logits).abs().max())
    print(f"dense fp32 transformers model of woqconv's IR vs OpenVINO logits: max abs diff {diff:.3g}")
    assert diff < 1e-5, diff


@pytest.mark.loaders
def test_gptq_v2_output_loads_in_gptqmodel_like_the_openvino_model(converted, openvino_logits, tmp_path):
    from loading import run_loads

    rows = run_loads([("gptqmodel", converted["gptq-v2"])], tmp_path / "logits")
    row = rows[str(converted["gptq-v2"])]
    assert "error" not in row, row
    assert row["module"] == "TorchLinear", row  # GPTQModel's quantized torch kernel (qlinear/torch.py), not nn.Linear
    got = torch.load(row["file"])
    diff = float((got - openvino_logits).abs().max())
    print(f"gptq-v2 via GPTQModel vs OpenVINO logits: max abs diff {diff:.3g} (logits max {float(openvino_logits.abs().max()):.3g})")
    assert diff < TOL_GPTQMODEL, diff


def test_bad_ir_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(fixture_path(NAME), bad)
    xml = bad / "openvino_model.xml"
    xml.write_text(xml.read_text()[:5000])
    with pytest.raises(FormatError) as e:
        woqconv.inspect(bad)
    assert str(xml) in str(e.value) and "\n" not in str(e.value)
    (bad / "openvino_model.bin").unlink()
    with pytest.raises(FormatError) as e:
        woqconv.inspect(bad)
    assert "openvino_model.bin" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.loaders
def test_woqconvs_own_openvino_output_reads_back_to_the_same_ir(tmp_path):
    """The openvino target (optimum-intel's export with the codes substituted) and this reader agree: a mixed
    4/8-bit checkpoint written as IR reads back with the same codes, zero points, scales and precisions."""
    from woqconv.formats.openvino.export import openvino_python

    try:
        openvino_python()
    except woqconv.WoqconvError as e:
        pytest.skip(str(e))
    src = fixture_path("ar-mixed-g32-asym-auto_gptq")
    woqconv.convert(src, tmp_path / "ov", to="openvino")
    want, got = _layers(src), _layers(tmp_path / "ov")
    assert sorted(got) == sorted(want)
    for name, layer in want.items():
        g = got[name]
        assert (g.bits, g.group_size) == (layer.bits, layer.group_size), name
        assert torch.equal(g.codes, layer.codes) and torch.equal(g.zeros, layer.zeros), name
        assert torch.equal(g.scales, layer.scales) and torch.equal(g.dequantize(), layer.dequantize()), name
