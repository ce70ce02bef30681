"""bitsandbytes NF4/FP4 and INC nf4/fp4: reading, the nf4/fp4 writer, and requantization.

Everything is checked against the real libraries: bitsandbytes' own dequantize_4bit, INC's own
recover(), and the outputs loaded by transformers + bitsandbytes / gptqmodel and INC in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_in_process import run_cli
from conftest import BASE, MANIFEST, base_for, fixture_path
from safetensors.torch import load_file, save_file

from woqconv.convert import convert
from woqconv.errors import RefusedConversion
from woqconv.runtime.verify import verify
from woqconv.runtime.worker import BASE_ENV
from woqconv.source import open_checkpoint

BNB = sorted(n for n, e in MANIFEST.items() if e.get("family") == "bnb")
INC_CODEBOOK = sorted(n for n, e in MANIFEST.items() if e.get("family") == "inc-codebook")
AFFINE_TARGETS = ("gptq", "gptq-v2", "awq", "inc", "inc-hf", "hpu")


def test_fixtures_cover_the_bnb_variants():
    variants = {(MANIFEST[n]["quant_type"], MANIFEST[n]["double_quant"], MANIFEST[n]["dtype"]) for n in BNB}
    assert {q for q, _, _ in variants} == {"nf4", "fp4"}
    assert {dq for _, dq, _ in variants} == {True, False}
    assert {d for _, _, d in variants} == {"float16", "bfloat16"}
    assert any(MANIFEST[n]["quant_storage"] != "uint8" for n in BNB)
    assert {MANIFEST[n]["quant_type"] for n in INC_CODEBOOK} == {"nf4", "fp4"}


@pytest.mark.parametrize("name", BNB)
def test_dequantize_equals_bitsandbytes(name):
    import bitsandbytes.functional as F

    sd = load_file(fixture_path(name) / "model.safetensors")
    with open_checkpoint(fixture_path(name)) as src:
        assert src.is_codebook and len(src.layers) == 14
        for info in src.layers:
            layer = src.read_layer(info.name)
            p = info.name + ".weight."
            state = F.QuantState.from_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, device="cpu")
            ref = F.dequantize_4bit(sd[info.name + ".weight"].view(torch.uint8), state)
            mine = layer.dequantize().to(layer.dtype)
            assert ref.dtype == mine.dtype
            # Bitwise (NaN payloads would hide behind ==), except the sign of a zero: bitsandbytes 0.50.2's own
            # CPU kernels disagree on it. FP4 index 8 is +0.0 in the stored quant_map and came out +0.0 on the
            # machines of earlier runs, but -0.0 (sign from the index's top bit) on an AVX2-only AMD EPYC.
            bitwise = ref.view(torch.int16) == mine.view(torch.int16)
            assert bool((bitwise | ((ref == 0) & (mine == 0))).all()), info.name
            assert int((~bitwise).sum()) <= int((layer.idx == 8).sum()) if layer.quant_type == "fp4" else bool(bitwise.all())


INC_RECOVER = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from neural_compressor.torch.quantization import load
from woqconv.source import open_checkpoint
for path in sys.argv[2:]:  # argv[1]: the original model's directory (INC's default format records none)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1]), dtype=torch.float32)
    modules = dict(load(path, format="default", original_model=base, device="cpu").named_modules())
    with open_checkpoint(path) as src:
        for info in src.layers:
            inc = modules[info.name].recover()
            mine = src.read_layer(info.name).dequantize()
            same = bool(torch.equal(inc.view(torch.int32), mine.view(torch.int32)))
            print(json.dumps({"path": path, "layer": info.name, "equal": same}))
"""


@pytest.mark.slow
def test_inc_codebook_dequantize_equals_inc_recover(tmp_path):
    paths = [str(fixture_path(n)) for n in INC_CODEBOOK]
    proc = subprocess.run([sys.executable, "-c", INC_RECOVER, str(BASE), *paths], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 14 * len(paths), proc.stderr[-2000:]
    assert all(r["equal"] for r in rows), [(r["path"], r["layer"]) for r in rows if not r["equal"]]


def _worker(tmp: Path, *specs: str) -> list[dict]:
    """Real loaders (woqconv.runtime.worker): fp32 logits of a fixed prompt and perplexity on a fixed stream."""
    proc = subprocess.run([sys.executable, "-m", "woqconv.runtime.worker", str(tmp / "logits"), "cpu", *specs],
                          capture_output=True, text=True, timeout=1500, cwd=tmp, env={**os.environ, BASE_ENV: str(BASE)})
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(specs), proc.stderr[-3000:]
    for row in rows:
        assert "error" not in row, row
        row["logits"] = torch.load(row["file"])
    return rows


@pytest.mark.slow
def test_nf4_writer_loads_with_the_source_logits(tmp_path):
    """bnb -> nf4/fp4 (every fixture: DQ undone, bf16 storage rewritten as uint8) and INC nf4 -> nf4."""
    specs, pairs = [], []
    for name in BNB + ["inc-default-nf4-g64"]:
        to = MANIFEST[name]["quant_type"]
        out = tmp_path / name
        report = convert(fixture_path(name), out, base_model=base_for(fixture_path(name)), to=to)
        assert report.lossless and not report.requantized
        pairs.append((name, len(specs)))
        if name.startswith("bnb"):
            specs += [f"transformers:{out}", f"transformers:{fixture_path(name)}"]
        else:
            specs += [f"transformers:{out}", f"inc-default:{fixture_path(name)}", f"dense:{out}",
                      f"transformers:{fixture_path('bnb-nf4-fp16')}", f"dense:{fixture_path('bnb-nf4-fp16')}"]
    rows = _worker(tmp_path, *specs)
    for name, i in pairs:
        got, ref = rows[i], rows[i + 1]
        assert got["module"] == "Linear4bit", got
        if name.startswith("bnb"):
            # Same loader, same bits in the file: the logits are the same numbers.
            assert torch.equal(got["logits"], ref["logits"]), name
            continue
        dense, bnb_own, bnb_own_dense = rows[i + 2], rows[i + 3], rows[i + 4]
        # The output's weights, dequantized exactly, compute INC's logits to the last bit.
        assert torch.equal(dense["logits"], ref["logits"])
        # bitsandbytes' CPU kernel holds absmax in bf16 (PEERS.md 3.3): on its own checkpoint it is off
        # the exact fp32 logits by this much, and on woqconv's output by no more.
        budget = float((bnb_own["logits"] - bnb_own_dense["logits"]).abs().max())
        assert 0 < budget < 0.02
        assert float((got["logits"] - ref["logits"]).abs().max()) <= 1.5 * budget, name


def test_nf4_output_is_read_back_bit_exact(tmp_path):
    for name in BNB + ["inc-default-nf4-g64"]:
        to = MANIFEST[name]["quant_type"]
        convert(fixture_path(name), tmp_path / name, base_model=base_for(fixture_path(name)), to=to)
        with open_checkpoint(fixture_path(name)) as a, open_checkpoint(tmp_path / name) as b:
            for la, lb in zip(a.iter_layers(), b.iter_layers()):
                assert la.name == lb.name and lb.double_quant is False
                assert torch.equal(la.dequantize().view(torch.int32), lb.dequantize().view(torch.int32)), (name, la.name)


def test_inc_fp4_to_bnb_fp4_is_refused_then_requantized(tmp_path):
    """INC's fp4 table is integer-valued (scale = absmax / 12): its products differ from bitsandbytes' in the
    last bit (FORMATS.md 4.6), so the lossless writer refuses and --requantize quotes a tiny error."""
    with pytest.raises(RefusedConversion, match="`requantize`"):
        convert(fixture_path("inc-default-fp4-g64"), tmp_path / "a", base_model=base_for(fixture_path("inc-default-fp4-g64")), to="fp4")
    assert not (tmp_path / "a").exists()
    report = convert(fixture_path("inc-default-fp4-g64"), tmp_path / "b", base_model=base_for(fixture_path("inc-default-fp4-g64")), to="fp4", requantize="search")
    worst = max(v["rel_fro"] for v in report.requantized.values())
    assert worst < 1e-6, worst


@pytest.mark.slow
def test_double_quant_on_request_is_reported_and_loads(tmp_path):
    report = convert(fixture_path("bnb-nf4-fp16"), tmp_path / "dq", base_model=base_for(fixture_path("bnb-nf4-fp16")), to="nf4", double_quant=True)
    assert not report.lossless
    assert {v["kind"] for v in report.lossy_layers.values()} == {"double-quant"}
    assert all(0 < v["max_rel_change"] < 0.05 for v in report.lossy_layers.values())
    sd = load_file(tmp_path / "dq" / "model.safetensors")
    qs = json.loads(bytes(sd["model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert qs["nested_blocksize"] == 256 and sd["model.layers.0.mlp.up_proj.weight.absmax"].dtype == torch.uint8
    got, ref = _worker(tmp_path, f"transformers:{tmp_path / 'dq'}", f"transformers:{fixture_path('bnb-nf4-fp16')}")
    assert got["module"] == "Linear4bit"
    assert float(torch.nn.functional.cosine_similarity(got["logits"].flatten(), ref["logits"].flatten(), dim=0)) > 0.999


@pytest.mark.parametrize("to", AFFINE_TARGETS)
def test_codebook_to_affine_is_refused_without_requantize(to, tmp_path):
    with pytest.raises(RefusedConversion, match="`requantize` would fit"):
        convert(fixture_path("bnb-nf4-fp16"), tmp_path / "out", base_model=base_for(fixture_path("bnb-nf4-fp16")), to=to)
    assert not any(tmp_path.iterdir())


def test_affine_to_codebook_and_act_order_are_refused_without_requantize(tmp_path):
    with pytest.raises(RefusedConversion, match="`requantize` would fit nf4"):
        convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "a", base_model=base_for(fixture_path("ar-g32-asym-auto_gptq")), to="nf4")
    with pytest.raises(RefusedConversion, match="`requantize` would refit contiguous groups"):
        convert(fixture_path("inc-hf-gptq-actorder-g32-asym"), tmp_path / "b", base_model=base_for(fixture_path("inc-hf-gptq-actorder-g32-asym")), to="awq")
    assert not any(tmp_path.iterdir())


REQUANT_CASES = [(n, "gptq") for n in BNB] + [("inc-default-nf4-g64", "hpu"), ("ar-g32-asym-auto_gptq", "nf4"),
                                              ("inc-hf-gptq-actorder-g32-asym", "awq")]


@pytest.mark.parametrize("name,to", REQUANT_CASES)
def test_requantize_search_beats_min_max_on_every_layer(name, to, tmp_path):
    report = convert(fixture_path(name), tmp_path / "out", base_model=base_for(fixture_path(name)), to=to, requantize="search", dry_run=True,
                     allow_bf16=to == "hpu")
    assert not (tmp_path / "out").exists()  # a dry run computes the errors, writes nothing
    assert len(report.requantized) == 14
    for layer, v in report.requantized.items():
        assert v["rel_fro"] < v["minmax"]["rel_fro"], (layer, v)
        assert v["snr_db"] > v["minmax"]["snr_db"], (layer, v)
        assert 0 < v["rel_fro"] < 0.15, (layer, v)


@pytest.mark.slow
def test_requantized_outputs_load_in_their_real_loaders(tmp_path):
    """nf4 -> gptq (search and min-max) in transformers + gptqmodel, nf4 -> hpu through INC's Gaudi path
    (emulated on CPU): each loader computes what woqconv wrote (its dense reading), and the perplexity on
    the fixed stream is quoted for the NF4 source and both requantizations."""
    src = fixture_path("bnb-nf4-fp16")
    outs = {}
    for method in ("search", "minmax"):
        outs[method] = tmp_path / f"gptq-{method}"
        convert(src, outs[method], to="gptq", requantize=method)
    outs["hpu"] = tmp_path / "hpu"
    report = convert(src, outs["hpu"], to="hpu", requantize="search", allow_bf16=True)
    assert len(report.requantized) == 14 and not report.lossless
    rows = _worker(
        tmp_path,
        f"transformers:{src}",
        f"transformers:{outs['search']}", f"dense:{outs['search']}",
        f"transformers:{outs['minmax']}",
        f"inc-hpu:{outs['hpu']}", f"dense:{outs['hpu']}",
    )
    nf4, search, search_dense, minmax, hpu, hpu_dense = rows
    assert search["module"] != "Linear" and minmax["module"] != "Linear"
    assert float((search["logits"] - search_dense["logits"]).abs().max()) < 1e-3
    assert float((hpu["logits"] - hpu_dense["logits"]).abs().max()) < 0.1  # bf16 compute on Gaudi's path
    cos = {}
    for what, row in (("search", search), ("minmax", minmax), ("hpu", hpu)):
        cos[what] = float(torch.nn.functional.cosine_similarity(row["logits"].flatten(), nf4["logits"].flatten(), dim=0))
        # ~8.5 % weight error on every layer of a random tiny model: the logits stay on the same side.
        assert cos[what] > 0.97, (row["path"], cos[what])
    print(f"\nperplexity on the fixed stream: nf4 source {nf4['ppl']:.4f}, woqconv search {search['ppl']:.4f}, "
          f"min-max {minmax['ppl']:.4f}, hpu (search, bf16) {hpu['ppl']:.4f}; logit cosine to the source: "
          + ", ".join(f"{k} {v:.4f}" for k, v in cos.items()))


@pytest.mark.slow
def test_verify_codebook_outputs(tmp_path):
    """verify: a lossless nf4 output is bit-identical layer by layer; a requantized gptq output is judged by
    its weight error and by running close to the source (transformers + gptqmodel against bitsandbytes)."""
    convert(fixture_path("inc-default-nf4-g64"), tmp_path / "nf4", base_model=base_for(fixture_path("inc-default-nf4-g64")), to="nf4")
    lossless = verify(tmp_path / "nf4", against=fixture_path("inc-default-nf4-g64"), base_model=base_for(fixture_path("inc-default-nf4-g64")), run=False)
    assert lossless.passed, lossless.failures
    weights = [c for c in lossless.checks if c.check == "weights"]
    assert len(weights) == 14 and all(c.detail == "bit-identical (dequantized)" for c in weights)

    convert(fixture_path("bnb-nf4-fp16"), tmp_path / "gptq", base_model=base_for(fixture_path("bnb-nf4-fp16")), to="gptq", requantize="search")
    lossy = verify(tmp_path / "gptq", against=fixture_path("bnb-nf4-fp16"), base_model=base_for(fixture_path("bnb-nf4-fp16")))
    assert lossy.passed, lossy.failures
    assert not [c for c in lossy.checks if c.check == "weights"]  # no layer claims to be the source's
    weights = [c for c in lossy.checks if c.check == "weights (requantized)"]
    assert len(weights) == 14 and all(c.detail.startswith("relative Frobenius error 0.08") for c in weights)
    assert lossy.metrics["requantized"] and lossy.metrics["cosine"] > 0.97
    # The table never sums requantized layers up as bit-identical.
    text = run_cli("verify", tmp_path / "gptq", "--against", fixture_path("bnb-nf4-fp16"), "--no-run", env={"COLUMNS": "200"})
    assert text.returncode == 0 and "weights (requantized)" in text.stdout and "14 layers" in text.stdout
    assert "bit-identical to the source" not in text.stdout


def _rewrite_state(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "bad"
    shutil.copytree(fixture_path("bnb-nf4-fp16"), dst)
    sd = load_file(dst / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(sd[key].tolist()))
    edit(state)
    sd[key] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(shape=[128, 200]), "quant_state shape [128, 200] needs 12800"),
    (lambda s: s.update(quant_type="int4"), "quant_type 'int4' is not one of nf4, fp4"),
    (lambda s: s.update(blocksize=48), "blocksize 48 is not a power of two"),
])
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_bad_quant_state_is_one_line_exit_2(edit, message, command, tmp_path, monkeypatch):
    bad = _rewrite_state(tmp_path, edit)
    before = (bad / "model.safetensors").read_bytes()
    args = {"inspect": ["inspect", str(bad)], "convert": ["convert", str(bad), "-o", str(tmp_path / "out"), "--to", "nf4"]}[command]
    monkeypatch.chdir(tmp_path)
    proc = run_cli(*args)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("woqconv")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0] and "model.safetensors" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert (bad / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("name", ["bnb-nf4-dq-bf16-storage-bf16", "inc-default-fp4-g64"])
def test_inspect_describes_the_codebook(name):
    proc = run_cli("inspect", fixture_path(name), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    entry = MANIFEST[name]
    assert r["codebook"]["quant_type"] == [entry["quant_type"]]
    assert r["codebook"]["blocksizes"] == [64]
    assert r["codebook"]["double_quant"] is entry.get("double_quant", False)
    assert r["codebook"]["weight_dtypes"] == [entry["dtype"]]
    assert r["quantized_modules"] == 14 and r["zero_point_convention"] == "none"
