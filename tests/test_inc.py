"""INC and Gaudi: INC's own loaders read woqconv's inc / inc-hf outputs from every source family, and
woqconv's hpu_model.safetensors is the cache INC itself writes on a Gaudi load (emulated on CPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import BASE, MANIFEST, base_for, fixture_path
from loading import (
    TOL,
    read_by_auto_round_kernel,
    run_loads,
    source_loader,
    twin_auto_gptq,
)
from safetensors.torch import load_file, save_file

import woqconv
from woqconv.errors import RefusedConversion

pytestmark = pytest.mark.loaders

# Every GPTQ v1 / v2, AWQ and AutoRound fixture INC can hold: INC does not pack 3-bit as GPTQ does, and
# its int8(q - z) dequant wraps for 8-bit asymmetric layers (both refused, see test_convert_fixtures).
SOURCES = sorted(
    n for n, e in MANIFEST.items()
    if e.get("family") in ("gptq-v1", "gptq-v2", "awq-gemm") and not n.startswith("inc-") and e["bits"] in (2, 4)
    and not e.get("layer_config")  # mixed precision: test_mixed_precision.py loads its inc output through INC
)
GROUPS = {
    "w4-g32": [n for n in SOURCES if n.startswith(("ar-g32-", "mislabelled"))],
    "w4-g128": [n for n in SOURCES if n.startswith("ar-g128-")],
    "w2-zp0": [n for n in SOURCES if n.startswith(("ar-w2-", "ar-zp0-"))],
}


def test_groups_cover_every_source():
    assert sorted(n for g in GROUPS.values() for n in g) == SOURCES and len(SOURCES) == 23


def _logits(rows, path) -> torch.Tensor:
    return torch.load(rows[str(path)]["file"])


def _refs(sources) -> set[str]:
    """The sources, and AutoRound's own gptqmodel-readable export of each AutoRound (or relabelled) one's run."""
    return set(sources) | {twin_auto_gptq(s) for s in sources if MANIFEST[s]["producer"].startswith("auto-round") or s.startswith("mislabelled")}


@pytest.fixture(scope="module")
def inc_loaded(tmp_path_factory):
    """Every source converted to inc and inc-hf, and every output and reference loaded in one loader process."""
    tmp = tmp_path_factory.mktemp("inc-load")
    outputs = {}
    for src in SOURCES:
        for target, loader in (("inc", "inc-default"), ("inc-hf", "inc")):
            out = tmp / f"{src}--{target}"
            woqconv.convert(fixture_path(src), out, to=target, base_model=base_for(fixture_path(src)))
            outputs[src, target] = (loader, out)
    specs = [(source_loader(s), fixture_path(s)) for s in sorted(_refs(SOURCES))] + list(outputs.values())
    return outputs, run_loads(specs, tmp / "logits")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_inc_load_reads_inc_and_inc_hf_outputs(group, inc_loaded, record_property):
    converted, rows = inc_loaded
    outputs = [(src, target, *converted[src, target]) for src in GROUPS[group] for target in ("inc", "inc-hf")]
    mine = {str(fixture_path(s)) for s in _refs(GROUPS[group])} | {str(out) for *_, out in outputs}
    errors = {p: r["error"] for p, r in rows.items() if "error" in r and p in mine}
    assert not errors, errors
    measured = {}
    for src, target, _, out in outputs:
        src_module = rows[str(fixture_path(src))]["module"]
        entry = {"vs_source": float((_logits(rows, fixture_path(src)) - _logits(rows, out)).abs().max()), "inc_module": rows[str(out)]["module"]}
        assert entry["inc_module"] == "INCWeightOnlyLinear"
        if src.startswith("mislabelled"):
            # Its own loader trusts the v1 label and misreads the v2 zero points; woqconv reads the data.
            entry["vs_correctly_labelled_export"] = float((_logits(rows, fixture_path(twin_auto_gptq(src))) - _logits(rows, out)).abs().max())
            assert entry["vs_correctly_labelled_export"] <= TOL and entry["vs_source"] > 0.05, (src, target, entry)
        elif read_by_auto_round_kernel(src_module):
            # auto-round's kernels round asym dequant differently (PEERS.md; tests/test_loaders.py):
            # the tight check is against AutoRound's own GPTQ export of the same integers.
            entry["vs_autoround_auto_gptq_export"] = float((_logits(rows, fixture_path(twin_auto_gptq(src))) - _logits(rows, out)).abs().max())
            assert entry["vs_autoround_auto_gptq_export"] <= TOL, (src, target, entry)
            assert entry["vs_source"] <= 1e-3, (src, target, entry)
        else:
            assert entry["vs_source"] <= TOL, (src, target, entry)
        measured[f"{src} -> {target}"] = entry
    record_property("inc_logit_diffs", json.dumps(measured))
    print(json.dumps(measured, indent=1))


def test_inc_cannot_read_v2_or_awq_directly_but_reads_woqconv_output(tmp_path):
    """The reason the targets exist: INC misreads v2 zero points silently and refuses AWQ."""
    v2, awq = fixture_path("ar-g32-asym-auto_round_gptqmodel"), fixture_path("ar-g32-asym-auto_awq")
    shutil.copytree(v2, tmp_path / "v2-as-is")
    woqconv.convert(v2, tmp_path / "v2-inc-hf", to="inc-hf")
    rows = run_loads(
        [("transformers", fixture_path("ar-g32-asym-auto_gptq")), ("inc", tmp_path / "v2-as-is"), ("inc", tmp_path / "v2-inc-hf"), ("inc", awq)],
        tmp_path / "logits",
    )
    ref = _logits(rows, fixture_path("ar-g32-asym-auto_gptq"))
    assert float((_logits(rows, tmp_path / "v2-as-is") - ref).abs().max()) > 0.05  # INC reads v2 as v1: wrong
    assert float((_logits(rows, tmp_path / "v2-inc-hf") - ref).abs().max()) <= TOL
    assert "error" in rows[str(awq)]  # INC's hf loader has no AWQ repack


def test_act_order_keeps_g_idx_through_inc(tmp_path):
    """INC's own default-format GPTQ act-order checkpoint loses g_idx on reload (it writes act_order,
    reads desc_act). woqconv's inc output of the same checkpoint keeps it, as INC's load shows."""
    src = fixture_path("inc-default-gptq-actorder-g32-asym")
    woqconv.convert(src, tmp_path / "inc", to="inc")
    entries = json.loads((tmp_path / "inc" / "qconfig.json").read_text())
    assert all(next(iter(e.values()))["desc_act"] for e in entries.values())
    with woqconv.open_checkpoint(tmp_path / "inc") as ckpt:
        assert ckpt.g_idx_kind.value == "scattered"
    hf = fixture_path("inc-hf-gptq-actorder-g32-asym")  # same quantization run, INC's hf loader keeps g_idx
    rows = run_loads([("inc", hf), ("inc-default", src), ("inc-default", tmp_path / "inc")], tmp_path / "logits")
    assert not any("error" in r for r in rows.values()), rows
    ref = _logits(rows, hf)
    assert float((_logits(rows, tmp_path / "inc") - ref).abs().max()) <= TOL
    assert float((_logits(rows, src) - ref).abs().max()) > 0.05  # INC's own file, reloaded by INC: g_idx lost


HPU_SOURCES = ["inc-hf-rtn-g32-asym", "inc-hf-rtn-zp0-g32-asym", "ar-g32-asym-auto_gptq", "ar-g128-sym-auto_awq", "ar-g32-asym-auto_round_gptqmodel"]


def test_hpu_cache_is_byte_identical_to_inc_own_cache(tmp_path, record_property):
    """For each source: woqconv --to hpu, then INC's own first Gaudi load of the same inc-hf checkpoint
    (cache removed) writes its cache; the two files must be identical, and a load that uses woqconv's
    cache (repacking made to fail) must give the logits of INC's own first load."""
    specs, pairs = [], []
    for src in HPU_SOURCES:
        ours = tmp_path / f"{src}--hpu"
        report = woqconv.convert(fixture_path(src), ours, to="hpu", allow_bf16=True)
        theirs = tmp_path / f"{src}--inc-first-load"
        shutil.copytree(ours, theirs)
        (theirs / "hpu_model.safetensors").unlink()
        specs += [("first", theirs), ("cached", ours)]
        pairs.append((src, ours, theirs, report))
    rows = run_loads(specs, tmp_path / "logits", script="hpu_load.py")
    errors = {p: r["error"] for p, r in rows.items() if "error" in r}
    assert not errors, errors
    measured = {}
    for src, ours, theirs, report in pairs:
        a, b = load_file(ours / "hpu_model.safetensors"), load_file(theirs / "hpu_model.safetensors")
        assert sorted(a) == sorted(b), (src, sorted(set(a) ^ set(b)))
        for k in b:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (src, k)
        same_file = (ours / "hpu_model.safetensors").read_bytes() == (theirs / "hpu_model.safetensors").read_bytes()
        diff = float((_logits(rows, ours) - _logits(rows, theirs)).abs().max())
        assert diff == 0.0, (src, diff)
        assert rows[str(ours)]["module"] == "HPUWeightOnlyLinear"
        measured[src] = {
            "tensors": len(b), "file_byte_identical": same_file, "logits_max_abs_diff": diff, "device": rows[str(ours)]["device"],
            "scales_changed": sum(v["scales_changed"] for v in report.lossy_layers.values()),
            "scales_total": sum(layer.num_groups * layer.out_features for layer in woqconv.open_checkpoint(ours).layers),
        }
        assert same_file, src
    record_property("hpu_cache", json.dumps(measured))
    print(json.dumps(measured, indent=1))


# GPTQ (sym and asym), AWQ, INC's own default format (RTN; AWQ with MulLinear wrappers), z = 0 stored modularly.
HPU_DEFAULT_SOURCES = ["ar-g32-asym-auto_gptq", "ar-g128-sym-auto_gptq", "ar-g32-asym-auto_awq", "inc-default-rtn-g32-asym",
                       "inc-default-awq-g32-asym", "inc-hf-rtn-zp0-g32-asym"]


def test_hpu_default_cache_is_inc_own_cache_and_the_recipe_repacks_nothing(tmp_path, record_property):
    """The Gaudi recipe, verbatim, on each --to hpu-default output: INC's first load of the same
    checkpoint without woqconv's cache writes a file byte-identical to woqconv's, and the load that reads
    woqconv's cache (repacking made to fail) gives the logits of INC's own first load."""
    specs, pairs = [], []
    for src in HPU_DEFAULT_SOURCES:
        ours = tmp_path / f"{src}--hpu-default"
        report = woqconv.convert(fixture_path(src), ours, to="hpu-default", allow_bf16=True, base_model=base_for(fixture_path(src)))
        assert "quantized_hpu_weight.pt" in report.files_rewritten
        theirs = tmp_path / f"{src}--inc-first-load"
        shutil.copytree(ours, theirs)
        (theirs / "quantized_hpu_weight.pt").unlink()
        specs += [("default-first", theirs), ("default-cached", ours)]
        pairs.append((src, ours, theirs))
    mine = {src: (ours / "quantized_hpu_weight.pt").read_bytes() for src, ours, _ in pairs}
    rows = run_loads(specs, tmp_path / "logits", script="hpu_load.py")
    errors = {p: r["error"] for p, r in rows.items() if "error" in r}
    assert not errors, errors
    measured = {}
    for src, ours, theirs in pairs:
        assert (ours / "quantized_hpu_weight.pt").read_bytes() == mine[src], "INC rewrote a cache it could use"
        same_file = (theirs / "quantized_hpu_weight.pt").read_bytes() == mine[src]
        diff = float((_logits(rows, ours) - _logits(rows, theirs)).abs().max())
        measured[src] = {"cache_bytes": len(mine[src]), "byte_identical": same_file, "logits_max_abs_diff": diff,
                         "device": rows[str(ours)]["device"], "module": rows[str(ours)]["module"]}
        assert same_file and diff == 0.0, (src, measured[src])
        assert rows[str(ours)]["module"] in ("HPUWeightOnlyLinear", "MulLinear")
    record_property("hpu_default_cache", json.dumps(measured))
    print(json.dumps(measured, indent=1))


def test_hpu_default_refuses_what_gaudi_cannot_hold(tmp_path):
    with pytest.raises(RefusedConversion, match="scattered act-order"):
        woqconv.convert(fixture_path("inc-default-gptq-actorder-g32-asym"), tmp_path / "a", to="hpu-default", base_model=BASE)
    with pytest.raises(RefusedConversion, match="`allow_bf16=True`"):
        woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "b", to="hpu-default")
    with pytest.raises(RefusedConversion, match="records no architecture"):
        woqconv.convert(fixture_path("inc-default-rtn-g32-asym"), tmp_path / "c", to="hpu-default", allow_bf16=True)
    assert not any(tmp_path.iterdir())
    # Tied embeddings stored once: INC's cache would hold the user's own lm_head, in the dtype they load it.
    tied = tmp_path / "tied"
    shutil.copytree(fixture_path("ar-g32-asym-auto_gptq"), tied)
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    tensors = load_file(tied / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RefusedConversion, match="tied embeddings without lm_head.weight"):
        woqconv.convert(tied, tmp_path / "d", to="hpu-default", allow_bf16=True)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("target, cache", [("hpu-default", "quantized_hpu_weight.pt"), ("hpu", "hpu_model.safetensors")])
def test_main_job_loads_through_inc_hpu_path_without_repacking(target, cache, tmp_path):
    """scripts/demo.sh: both of INC's Gaudi routes, the default format's by the recipe's own call."""
    import subprocess
    import sys

    out = tmp_path / target
    woqconv.convert(fixture_path("ar-g128-asym-auto_gptq"), out, to=target, allow_bf16=True)
    before = (out / cache).read_bytes()
    base = ["--base-model", str(BASE)] if target == "hpu-default" else []
    r = subprocess.run([sys.executable, "-m", "woqconv.runtime.inc_hpu", str(out), *base, "--format", "json"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["layers_repacked"] == 0 and report["hpu_modules"] == 14 and report["cache"] == cache
    assert report["device"] in ("hpu", "hpu (emulated on CPU)")
    assert report["max_abs_diff_vs_cpu_fp32"] < 2e-2 and report["top1_agreement"] == 1.0  # bf16 scales and activations
    assert (out / cache).read_bytes() == before, "INC must read the cache, not rewrite it"


def test_a_stale_hpu_cache_never_travels(tmp_path):
    """INC uses any hpu_model.safetensors it finds without checking it against the weights, so a cache
    left in a source must be dropped by every conversion (and regenerated by --to hpu)."""
    src = tmp_path / "src"
    shutil.copytree(fixture_path("inc-hf-rtn-g32-asym"), src)
    (src / "hpu_model.safetensors").write_bytes(b"stale")
    r = woqconv.convert(src, tmp_path / "gptq", to="gptq")
    assert "hpu_model.safetensors" in r.files_dropped and not (tmp_path / "gptq" / "hpu_model.safetensors").exists()
    woqconv.convert(src, tmp_path / "hpu", to="hpu", allow_bf16=True)
    assert (tmp_path / "hpu" / "hpu_model.safetensors").read_bytes() != b"stale"
    with woqconv.open_checkpoint(tmp_path / "hpu") as ckpt:  # primary weights are read, not the cache
        assert ckpt.format.name == "gptq"


def test_inc_default_format_hpu_cache_is_read(tmp_path):
    """INC's own default-format Gaudi cache (quantized_hpu_weight.pt, written by INC under the
    emulation) read alone gives the source's integers, with bf16 scales."""
    import subprocess
    import sys

    src = tmp_path / "inc-default"
    shutil.copytree(fixture_path("inc-default-rtn-g32-asym"), src)
    script = (
        "import torch\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "from neural_compressor.torch.quantization import load\n"
        "from woqconv.runtime.hpu_emulation import emulated_hpu\n"
        f"p = {str(src)!r}\n"
        f"base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({str(BASE)!r}), dtype=torch.bfloat16)\n"
        "with emulated_hpu():\n"
        "    load(p, format='default', original_model=base, device='hpu')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cache_only = tmp_path / "cache-only"
    cache_only.mkdir()
    for f in ("quantized_hpu_weight.pt", "qconfig.json"):
        shutil.copy(src / f, cache_only / f)
    with woqconv.open_checkpoint(cache_only) as cache, woqconv.open_checkpoint(fixture_path("inc-default-rtn-g32-asym")) as ref:
        assert cache.format.name == "hpu" and cache.format.family == "hpu"
        for a, b in zip(ref.iter_layers(), cache.iter_layers()):
            assert a.name == b.name and torch.equal(a.codes, b.codes) and torch.equal(a.zeros, b.zeros)
            assert b.scales.dtype == torch.bfloat16 and torch.equal(a.scales.to(torch.bfloat16), b.scales)
