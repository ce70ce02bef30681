"""OpenVINO IRs as optimum-intel exports them (``optimum-cli export openvino --weight-format int4|int8``), the
models users download as ``*-int4-ov`` / ``*-int8-ov`` repos: fixtures of a Llama and a Qwen2 (q/k/v biases,
tied embeddings), int4 sym with groups, int4 asym with ratio 0.6 (int8 backup layers), int4 sym per-channel and
int8.

The reference for "the same weights" is OpenVINO itself: every MatMul and Gather whose weight comes out of an
integer constant gets that weight computed by the CPU plugin (the graph's own decompression, compiled alone in
f32), found and named by this test from the graph's structure, without woqconv. The outputs then run in their
real loaders against OVModelForCausalLM on the exported model (f32, no dynamic quantization).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_in_process import run_cli
from conftest import MANIFEST, fixture_path

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

import woqconv  # noqa: E402

OPTIMUM = sorted(n for n in MANIFEST if n.startswith("ov-optimum-"))
EXPECTED = [
    "ov-optimum-llama-int4-asym-g64-r06", "ov-optimum-llama-int4-sym-g64", "ov-optimum-llama-int4-sym-perchannel",
    "ov-optimum-llama-int8", "ov-optimum-qwen2-int4-asym-g64-r06", "ov-optimum-qwen2-int4-sym-g64", "ov-optimum-qwen2-int8",
]
OV_EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
INTEGER = ("u4", "i4", "u8", "i8")
MODULE = re.compile(r"^__module\.([\w.]+)/")
# The outputs' loaders against OpenVINO's logits (issue 22's bound): GPTQModel runs its kernel in fp16, the
# transformers route (gptqmodel's torch kernel behind AutoModelForCausalLM) in fp32.
TOL = 1e-3


def _integer_source(value, depth: int = 8):
    """The integer Constant a weight input is decompressed from (None: an activation or a float weight)."""
    node = value.get_node()
    if node.get_type_name() == "Constant":
        return node if node.get_output_element_type(0).get_type_name() in INTEGER else None
    if depth == 0 or node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape"):
        return None
    return _integer_source(node.input_value(0), depth - 1)  # the codes travel on input 0 of each op


def openvino_weights(name: str) -> dict[str, dict]:
    """Module -> {"weight": the weight as OpenVINO's CPU plugin applies it, "type": codes element type, "op"}.

    Each compressed weight is probed through its own consumer: the MatMul multiplies an identity matrix
    (f32 inference, no dynamic quantization, so the FullyConnected kernel's decompression is what comes
    out), the Gather looks up every row. The decompression sub-graph evaluated alone would be
    constant-folded in the graph's own f16 ops instead: for optimum's asymmetric exports that rounds
    2,000-40,000 values per layer by up to 3.1e-5, values the model never uses."""
    model = ov.Core().read_model(str(fixture_path(name) / "openvino_model.xml"))
    found, params, outputs = {}, [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        value = op.input_value(1 if kind == "MatMul" else 0)
        const = _integer_source(value)
        if const is None:
            continue
        rows, cols = (int(d) for d in value.get_shape())
        if kind == "MatMul":
            probe = ops.parameter([1, cols, cols], ov.Type.f32)
            outputs.append(ops.matmul(probe, value, False, True))
        else:
            probe = ops.parameter([rows], ov.Type.i64)
            outputs.append(ops.gather(value, probe, ops.constant(np.int64(0))))
        params.append(probe)
        module = MODULE.match(op.get_friendly_name()).group(1)
        found[module] = {"type": const.get_output_element_type(0).get_type_name(), "op": kind,
                         "grouped": len(const.get_output_shape(0)) == 3, "index": len(outputs) - 1, "size": (rows, cols)}
    compiled = ov.Core().compile_model(ov.Model([ops.result(o) for o in outputs], params), "CPU", OV_EXACT)
    inputs = {}
    for info in found.values():
        rows, cols = info["size"]
        inputs[info["index"]] = np.eye(cols, dtype=np.float32)[None] if info["op"] == "MatMul" else np.arange(rows, dtype=np.int64)
    result = compiled(inputs)
    for info in found.values():
        value = torch.from_numpy(np.asarray(result[info.pop("index")]))
        info["weight"] = value[0].T.contiguous() if info["op"] == "MatMul" else value
    return found


@pytest.fixture(scope="module")
def graphs() -> dict[str, dict[str, dict]]:
    return {name: openvino_weights(name) for name in OPTIMUM}


def _linears(graph: dict) -> dict[str, dict]:
    """The compressed linears Hugging Face checkpoints quantize: every compressed weight but the embedding
    (a Gather) and the output head."""
    return {m: w for m, w in graph.items() if w["op"] == "MatMul" and m != "lm_head"}


def _eight_bit(graph: dict) -> list[str]:
    return sorted(m for m, w in _linears(graph).items() if w["type"] in ("u8", "i8"))


def test_the_fixtures_are_the_optimum_cli_exports_issue_22_names():
    assert OPTIMUM == EXPECTED
    for name in OPTIMUM:
        files = {p.name for p in fixture_path(name).iterdir()}
        # exactly what optimum-cli writes: the IR, its record, the tokenizer as IR and as Hugging Face files
        assert {"openvino_model.xml", "openvino_model.bin", "openvino_config.json", "openvino_tokenizer.xml",
                "openvino_detokenizer.xml", "config.json", "tokenizer.json"} <= files, name


@pytest.mark.parametrize("name", OPTIMUM)
def test_every_compressed_weight_reads_as_openvino_decompresses_it(name, graphs):
    graph = graphs[name]
    with woqconv.open_checkpoint(fixture_path(name)) as src:
        layers = {layer.name: layer for layer in src.iter_layers()}
        heads = {m: src.ckpt.read(f"{m}.weight") for m, w in graph.items() if m not in _linears(graph) and src.ckpt.has(f"{m}.weight")}
    linears = _linears(graph)
    assert sorted(layers) == sorted(linears) and len(layers) == 14, name
    for module, w in linears.items():
        layer = layers[module]
        assert layer.bits == (4 if w["type"] in ("u4", "i4") else 8), (name, module)
        # optimum's symmetric modes are signed codes without a zero point: read as z = 2^(b-1) exactly
        assert layer.is_symmetric == (w["type"] in ("i4", "i8")), (name, module)
        assert (layer.group_size < layer.in_features) == w["grouped"], (name, module)
        assert torch.equal(layer.dequantize(), w["weight"]), (name, module)
    # The embedding and the output head are compressed in the IR (int8 per channel) and read as the dense
    # weights OpenVINO computes; a tied head (Qwen2) reads the embedding's decompression.
    assert torch.equal(heads["model.embed_tokens"], graph["model.embed_tokens"]["weight"]), name
    if "qwen2" in name:
        assert "lm_head" not in heads and torch.equal(graph["lm_head"]["weight"], graph["model.embed_tokens"]["weight"])
    else:
        assert torch.equal(heads["lm_head"], graph["lm_head"]["weight"]), name


def test_qwen2_biases_and_norm_weights_are_read_as_exported():
    """optimum-intel keeps a patched linear's bias as ``self.<module>._openvino_orig_bias`` and drops the names
    of RMSNorm weights; both are found, with the values of the original model (fp16, widened exactly)."""
    from safetensors.torch import load_file

    original = load_file(str(fixture_path("base-qwen2-fp16") / "model.safetensors"))
    with woqconv.open_checkpoint(fixture_path("ov-optimum-qwen2-int4-sym-g64")) as src:
        biases = {layer.name: layer.bias for layer in src.iter_layers() if layer.bias is not None}
        norms = {t: src.ckpt.read(t) for t in src.ckpt.tensor_names if t.endswith("norm.weight")}
    assert sorted(biases) == sorted(n[: -len(".bias")] for n in original if n.endswith(".bias"))
    assert all(torch.equal(b.float(), original[f"{n}.bias"].float()) for n, b in biases.items())
    assert sorted(norms) == sorted(n for n in original if n.endswith("norm.weight")) and len(norms) == 5
    assert all(torch.equal(v.float(), original[n].float()) for n, v in norms.items())


def test_inspect_shows_nncfs_precision_mix():
    r = woqconv.inspect(fixture_path("ov-optimum-qwen2-int4-asym-g64-r06"))
    table = r.compression_table
    modes = {row["mode"]: row for row in table["rows"]}
    assert set(modes) == {"int8_asym, per-channel", "int4_asym, group size 64"}
    eight, four = modes["int8_asym, per-channel"], modes["int4_asym, group size 64"]
    graph = openvino_weights("ov-optimum-qwen2-int4-asym-g64-r06")
    assert sorted(eight["ratio_defining_layers"]) == _eight_bit(graph)
    assert sorted(four["ratio_defining_layers"]) == sorted(set(_linears(graph)) - set(_eight_bit(graph)))
    assert "model.embed_tokens" in eight["layers"] and "model.embed_tokens" not in eight["ratio_defining_layers"]
    assert (table["layers"], table["ratio_defining_layers"]) == (15, 14)
    text = run_cli("inspect", fixture_path("ov-optimum-qwen2-int4-asym-g64-r06"), env={"COLUMNS": "300"}).stdout
    # NNCF printed these rows when it compressed this model (optimum-cli's log); its layer totals count one
    # more float layer, the rotary embedding's MatMul on an unnamed constant.
    assert re.search(r"int8_asym, per-channel\s*│\s*52% \(10 / 15\)\s*│\s*48% \(9 / 14\)", text), text
    assert re.search(r"int4_asym, group size 64\s*│\s*48% \(5 / 15\)\s*│\s*52% \(5 / 14\)", text), text
    as_json = json.loads(run_cli("inspect", fixture_path("ov-optimum-llama-int8"), "--format", "json").stdout)
    (row,) = as_json["compression_table"]["rows"]
    assert row["mode"] == "int8_asym, per-channel" and len(row["layers"]) == 16 and len(row["ratio_defining_layers"]) == 14


@pytest.fixture(scope="module")
def converted(tmp_path_factory, graphs):
    """Each fixture as gptq-v2, and as awq where every linear is 4-bit."""
    root = tmp_path_factory.mktemp("optimum")
    out = {}
    for name in OPTIMUM:
        out[(name, "gptq-v2")] = root / f"{name}-gptq-v2"
        woqconv.convert(fixture_path(name), out[(name, "gptq-v2")], to="gptq-v2")
        if not _eight_bit(graphs[name]):
            out[(name, "awq")] = root / f"{name}-awq"
            woqconv.convert(fixture_path(name), out[(name, "awq")], to="awq")
    return out


def test_outputs_keep_every_layer_and_carry_the_tokenizer(converted, graphs):
    assert sorted({n for n, to in converted if to == "awq"}) == [
        "ov-optimum-llama-int4-sym-g64", "ov-optimum-llama-int4-sym-perchannel", "ov-optimum-qwen2-int4-sym-g64"]
    for (name, to), out in converted.items():
        with woqconv.open_checkpoint(fixture_path(name)) as src, woqconv.open_checkpoint(out) as got:
            want = {layer.name: layer for layer in src.iter_layers()}
            have = {layer.name: layer for layer in got.iter_layers()}
            assert sorted(have) == sorted(want), (name, to)
            for module, layer in want.items():
                assert have[module].bits == layer.bits, (name, to, module)  # 4- and 8-bit layers both kept
                assert torch.equal(have[module].dequantize(), layer.dequantize()), (name, to, module)
        files = {p.name for p in out.iterdir()}
        assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "openvino_tokenizer.xml",
                "openvino_detokenizer.xml"} <= files, (name, to)
        assert "openvino_config.json" not in files  # optimum's record of the IR's compression, not of this checkpoint


@pytest.mark.parametrize("name", [n for n in EXPECTED if "r06" in n or "int8" in n])
def test_awq_refuses_eight_bit_layers_in_one_line_naming_them(name, graphs, tmp_path):
    eight = _eight_bit(graphs[name])
    r = run_cli("convert", fixture_path(name), "-o", tmp_path / "awq", "--to", "awq")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    if len(eight) == 14:
        assert "AWQ GEMM stores 4-bit codes only, not 8-bit: every layer (14)" in r.stderr, r.stderr
    else:
        assert "8-bit per-channel asym layers are not: " + ", ".join(eight) in r.stderr, r.stderr
    assert not (tmp_path / "awq").exists()


@pytest.mark.loaders
def test_outputs_run_in_their_loaders_like_openvinos_own_model(converted, tmp_path):
    from loading import run_loads

    from woqconv.runtime.runs import run_logits

    (tmp_path / "ov").mkdir()
    ov_rows = run_logits(tmp_path / "ov", ["f32"], [fixture_path(n) for n in OPTIMUM])
    assert all("error" not in row for row in ov_rows), ov_rows
    reference = {row["path"]: torch.load(row["file"]) for row in ov_rows}
    # GPTQModel's own loader for mixed precision (it honours `dynamic`); transformers' dispatch for the rest.
    specs = [("gptqmodel" if "r06" in name or "perchannel" in name else "transformers", out) for (name, _), out in converted.items()]
    rows = run_loads(specs, tmp_path / "logits")
    worst = {}
    for (name, to), out in converted.items():
        row = rows[str(out)]
        assert "error" not in row, row
        want = reference[str(fixture_path(name).resolve())]
        diff = float((torch.load(row["file"]) - want).abs().max())
        worst[f"{name} -> {to} ({row['loader']})"] = diff
        assert diff < TOL, (name, to, diff)
    print("max |logit diff| vs OVModelForCausalLM (f32): " + "; ".join(f"{k}: {v:.3g}" for k, v in worst.items()))


@pytest.mark.loaders
def test_woqconvs_own_openvino_output_reads_back_the_same(tmp_path):
    """OpenVINO in, OpenVINO out: every layer (4- and 8-bit, sym and asym) and every dense tensor reads back equal."""
    for name in ("ov-optimum-qwen2-int4-asym-g64-r06", "ov-optimum-llama-int4-sym-g64"):
        out = tmp_path / name
        woqconv.convert(fixture_path(name), out, to="openvino")
        with woqconv.open_checkpoint(fixture_path(name)) as src, woqconv.open_checkpoint(out) as got:
            want = {layer.name: layer for layer in src.iter_layers()}
            have = {layer.name: layer for layer in got.iter_layers()}
            assert sorted(have) == sorted(want), name
            for module, layer in want.items():
                g = have[module]
                assert (g.bits, g.group_size) == (layer.bits, layer.group_size), (name, module)
                assert torch.equal(g.codes, layer.codes) and torch.equal(g.zeros, layer.zeros), (name, module)
                assert torch.equal(g.scales, layer.scales), (name, module)
                # optimum's export of the dense architecture stores the biases as f32 [1, 1, out] constants: same values
                assert (g.bias is None) == (layer.bias is None), (name, module)
                assert layer.bias is None or torch.equal(g.bias.float(), layer.bias.float()), (name, module)
            dense = [t for t in src.ckpt.tensor_names if t not in src.owned_tensors()]
            assert sorted(t for t in got.ckpt.tensor_names if t not in got.owned_tensors()) == sorted(dense), name
            assert all(torch.equal(got.ckpt.read(t), src.ckpt.read(t)) for t in dense), name
        assert (out / "openvino_tokenizer.xml").exists() and (out / "tokenizer.json").exists()
    # and verify runs both in OpenVINO: the output against the source it came from
    report = woqconv.verify(out, against=fixture_path(name))
    assert report.passed and report.reference.startswith("openvino:"), report.failures


def _rewritten(name: str, tmp_path: Path, rewrite) -> Path:
    """A copy of fixture ``name`` whose graph ``rewrite(model)`` changed, saved by OpenVINO."""
    out = tmp_path / "bad"
    shutil.copytree(fixture_path(name), out)
    core = ov.Core()
    model = core.read_model(str(out / "openvino_model.xml"))
    rewrite(model)
    (out / "openvino_model.xml").unlink()
    (out / "openvino_model.bin").unlink()
    ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
    return out


def _q_proj_scale_multiply(model):
    return next(op for op in model.get_ordered_ops()
                if op.get_type_name() == "Multiply" and op.get_friendly_name().startswith("self.model.layers.0.self_attn.q_proj."))


def test_a_decompression_this_reader_does_not_know_is_refused_in_one_line_naming_the_node(tmp_path):
    def insert_abs(model):
        multiply = _q_proj_scale_multiply(model)
        (target,) = multiply.output(0).get_target_inputs()
        target.replace_source_output(ops.abs(multiply, name="odd_abs").output(0))

    bad = _rewritten("ov-optimum-llama-int4-sym-g64", tmp_path, insert_abs)
    r = run_cli("inspect", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "compressed weight reaches Abs 'odd_abs', no step of a decompression" in r.stderr and str(bad / "openvino_model.xml") in r.stderr, r.stderr


def test_a_compressed_weight_named_after_no_module_is_refused_naming_it(tmp_path):
    def anonymise(model):
        codes = _q_proj_scale_multiply(model).input_value(0).get_node().input_value(0).get_node()
        codes.set_friendly_name("Constant_99")
        for op in model.get_ordered_ops():
            if op.get_friendly_name().startswith("__module.model.layers.0.self_attn.q_proj/"):
                op.set_friendly_name("MatMul_99")

    bad = _rewritten("ov-optimum-llama-int4-sym-g64", tmp_path, anonymise)
    r = run_cli("inspect", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot tell which module compressed weight 'Constant_99' belongs to" in r.stderr, r.stderr


@pytest.mark.loaders
def test_verify_runs_an_openvino_source_in_openvino(converted):
    """verify OUT --against an OpenVINO IR: the reference is OVModelForCausalLM (f32, no dynamic quantization),
    not a transformers load of a directory that has no safetensors; the mixed 4/8-bit output runs in GPTQModel's
    own loader, the one that reads its per-module `dynamic`."""
    name = "ov-optimum-qwen2-int4-asym-g64-r06"
    report = woqconv.verify(converted[(name, "gptq-v2")], against=fixture_path(name))
    assert report.passed, report.failures
    assert report.reference == f"openvino:{fixture_path(name).resolve()}"
    assert report.metrics["reference_module"] == "OVModelForCausalLM" and report.metrics["max_abs_logit_diff"] < TOL
    assert (report.loader, report.metrics["loader_module"], report.metrics["precision"]) == ("gptqmodel", "TorchLinear", "fp16")
