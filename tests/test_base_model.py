"""Checkpoints that record no architecture (INC's default format, as INC writes it) and ``--base-model``.

INC's ``save(format="default")`` writes ``qconfig.json`` and ``quantized_weight.pt`` only (fixtures/README.md).
A target whose loaders need ``config.json`` is refused without a base model, in one line; with one, given
as a directory or as a Hub repo id from an offline cache, the output carries the base's config,
generation config and tokenizer, and loads in its real loader with the source's logits. A base of
another architecture or size is refused, naming the first difference.
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
from conftest import BASE, MANIFEST, ROOT, fixture_path
from fake_hub import populate_cache, read_dir
from loading import TOL, read_by_auto_round_kernel, run_loads, source_loader

import woqconv
from woqconv.errors import RefusedConversion

# INC's default-format fixtures with integer codes (the codebook ones are covered by test_codebook.py).
INC_DEFAULT = sorted(n for n, e in MANIFEST.items() if e["family"] in ("inc-default", "inc-nonoptimum") and e.get("bits") == 4
                     and not (fixture_path(n) / "config.json").exists())
# Every fixture in INC's default format, the nf4/fp4 ones too (their conversions are test_codebook.py's).
INC_DEFAULT_ALL = sorted(n for n, e in MANIFEST.items() if e["family"] in ("inc-default", "inc-nonoptimum", "inc-codebook"))
NEEDS_CONFIG = [t for t, target in woqconv.TARGETS.items() if target.needs_config]
BASE_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]


def test_inc_default_fixtures_are_what_inc_writes():
    assert len(INC_DEFAULT) >= 7 and len(INC_DEFAULT_ALL) == len(INC_DEFAULT) + 2, INC_DEFAULT_ALL
    for name in INC_DEFAULT_ALL:
        files = sorted(os.listdir(fixture_path(name)))
        assert "config.json" not in files and not any(f.startswith("tokenizer") for f in files), (name, files)


@pytest.mark.parametrize("name", INC_DEFAULT_ALL)
def test_targets_needing_a_config_refuse_without_base(name, tmp_path):
    for target in NEEDS_CONFIG:
        out = tmp_path / target
        r = run_cli("convert", fixture_path(name), "-o", out, "--to", target)
        assert r.returncode == 2, (target, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert "--base-model" in r.stderr and "records no architecture" in r.stderr, r.stderr
        assert "model_path 'base-fp16'" in r.stderr, r.stderr  # INC's record of the original model, named
        assert not out.exists()


@pytest.mark.slow
def test_recorded_model_path_is_used_when_it_resolves(tmp_path):
    # INC recorded model_path "base-fp16" (the id the quantizing script loaded): from fixtures/ it is a
    # local directory, so it is used, and the report says so.
    r = subprocess.run([sys.executable, "-m", "woqconv", "convert", "inc-default-rtn-g32-asym", "-o", tmp_path / "out", "--to", "gptq",
                        "--format", "json"], cwd=ROOT / "fixtures", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["base_model"] == "base-fp16 (recorded in qconfig.json as model_path)"
    assert report["files_from_base"] == BASE_FILES
    assert (tmp_path / "out" / "config.json").exists()


def test_inc_target_needs_no_base(tmp_path):
    report = woqconv.convert(fixture_path("inc-default-rtn-g32-asym"), tmp_path / "out", to="inc")
    assert report.base_model is None
    assert sorted(os.listdir(tmp_path / "out")) == ["qconfig.json", "quantized_weight.pt"]  # as INC itself writes it


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> tuple[Path, str]:
    """An offline Hub cache holding the base model as org/tiny-llama: weights too, which must not be taken."""
    home = tmp_path_factory.mktemp("hf")
    sha = populate_cache(home / "hub", "org/tiny-llama", read_dir(BASE))
    return home, sha


def _offline(home: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def _convertible(name: str, out: Path, target: str, base) -> bool:
    try:
        # Gaudi's bf16 scales accepted: the CPU loads below read the exact primary weights beside the cache.
        woqconv.convert(fixture_path(name), out, to=target, base_model=base, allow_bf16=True)
    except RefusedConversion as e:
        assert "records no architecture" not in str(e), e  # refused for what the layers are, never for the base
        return False
    return True


def reference(name: str) -> tuple[str, Path]:
    """The real loader that reads a fixture right, and what it loads: INC's own load, except where INC
    cannot reload its own file right (FORMATS.md 3.4): act-order entries lose g_idx (the same run's
    huggingface export keeps it), the non-optimum layout is not reloadable (the same run's optimum export)."""
    entry = MANIFEST[name]
    if entry["family"] == "inc-nonoptimum" or entry["g_idx"] == "scattered":
        twin = entry.get("run_reference") if entry["family"] == "inc-nonoptimum" else name.replace("inc-default-sharded-", "inc-hf-").replace("inc-default-", "inc-hf-")
        return source_loader(twin), fixture_path(twin)
    if entry.get("export") == "default-blockwise":
        return "inc-default-sharded", fixture_path(name)
    return source_loader(name), fixture_path(name)


# Real loaders per target; outputs of the Gaudi targets load as their inc-hf or inc checkpoint on CPU (the
# caches are tested against INC's own in test_inc.py), and the bitsandbytes targets refuse affine codes
# without --requantize.
LOADER_OF = {"gptq": "transformers", "gptq-v2": "transformers", "awq": "transformers", "inc-hf": "inc", "hpu": "inc", "inc": "inc-default",
             "hpu-default": "inc-default"}


@pytest.mark.loaders
def test_every_target_with_base_dir_and_hub_id(hub_cache, tmp_path):
    home, sha = hub_cache
    outputs = []
    for name in INC_DEFAULT:
        for target in LOADER_OF:
            out = tmp_path / f"{name}--{target}"
            if _convertible(name, out, target, BASE):
                outputs.append((name, target, out))
    assert len(outputs) >= 30, [(n, t) for n, t, _ in outputs]
    (tmp_path / "hub").mkdir()
    # As a Hub id from the offline cache (one process: huggingface_hub reads HF_HOME and the offline
    # switch when first imported): the same bytes as with the local directory, and only the base's
    # architecture files taken from it (the cached weights stay where they are). Once per target: the
    # base is resolved the same way whatever the source.
    per_target = list({t: (n, t, o) for n, t, o in reversed(outputs)}.values())
    assert sorted(t for _, t, _ in per_target) == sorted(LOADER_OF)
    jobs = [(str(fixture_path(n)), str(tmp_path / "hub" / o.name), t) for n, t, o in per_target]
    script = ("import json, sys, woqconv\n"
              "for s, o, t in json.loads(sys.argv[1]):\n"
              "    r = woqconv.convert(s, o, to=t, base_model='org/tiny-llama', allow_bf16=True)\n"
              "    print(json.dumps([r.base_model, r.files_from_base]))\n")
    r = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], env=_offline(home), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("[")]
    assert reports == [[f"org/tiny-llama@{sha} (given)", BASE_FILES]] * len(jobs)
    for (_, via_hub, target), (name, _, out) in zip(jobs, per_target):
        assert read_dir(Path(via_hub)) == read_dir(out), (name, target)
    for name, target, out in outputs:
        for f in BASE_FILES[1:]:
            assert (out / f).read_bytes() == (BASE / f).read_bytes()
        config = json.loads((out / "config.json").read_text())
        assert {k: v for k, v in config.items() if k != "quantization_config"} == json.loads((BASE / "config.json").read_text())
    refs = {n: reference(n) for n in INC_DEFAULT}
    specs = sorted(set(refs.values())) + [(LOADER_OF[t], o) for _, t, o in outputs]
    rows = run_loads(specs, tmp_path / "logits")
    errors = {p: r["error"] for p, r in rows.items() if "error" in r}
    assert not errors, errors
    measured = {}
    for name, target, out in outputs:
        diff = float((torch.load(rows[str(refs[name][1])]["file"]) - torch.load(rows[str(out)]["file"])).abs().max())
        measured[f"{name} -> {target}"] = diff
        assert diff <= TOL, (name, target, diff)
    print(json.dumps(measured, indent=1))


def _four_bit_fixtures() -> list[str]:
    """Every 4-bit affine fixture a real fp32 loader reads as the reference: not asymmetric compressed-tensors,
    which transformers refuses on CPU (its outputs are served by vLLM in test_vllm.py)."""
    return sorted(n for n, e in MANIFEST.items() if e.get("bits") == 4 and e["family"] not in ("bnb", "inc-codebook") and not e["family"].startswith("openvino")
                  and not n.startswith("mislabelled") and not e.get("layer_config")
                  and not (e["family"] == "compressed-tensors" and not e["sym"]))


@pytest.mark.loaders
def test_inc_output_loads_with_the_users_own_original_model(tmp_path):
    """INC's documented call, original_model=AutoModelForCausalLM.from_pretrained(BASE, dtype=D), for every
    --to inc output of every 4-bit fixture, for D = float32 and bfloat16."""
    outputs = []
    for name in _four_bit_fixtures():
        out = tmp_path / name
        woqconv.convert(fixture_path(name), out, to="inc", base_model=None if (fixture_path(name) / "config.json").exists() else BASE)
        outputs.append((name, out))
    assert len(outputs) >= 25
    refs = {n: reference(n) if n in INC_DEFAULT else (source_loader(n), fixture_path(n)) for n, _ in outputs}
    for _, out in outputs:  # one directory per load: rows come back by path
        shutil.copytree(out, out.with_name(out.name + "--bfloat16"))
    specs = sorted(set(refs.values())) + [(f"inc-default-user-{d}", out.with_name(out.name + ("--bfloat16" if d == "bfloat16" else "")))
                                          for _, out in outputs for d in ("float32", "bfloat16")]
    rows = run_loads(specs, tmp_path / "logits")
    errors = {p: r["error"] for p, r in rows.items() if "error" in r}
    assert not errors, errors
    measured = {}
    for name, out in outputs:
        src_row = rows[str(refs[name][1])]
        ref = torch.load(src_row["file"])
        # auto-round's own kernels compute asym dequant in another order than INC's (up to 6e-4 here);
        # compressed-tensors decompresses into its fp16 scales' dtype (2.7e-4 here).
        tol = 1e-3 if read_by_auto_round_kernel(src_row["module"]) or MANIFEST[name]["family"] == "compressed-tensors" else TOL
        for d in ("float32", "bfloat16"):
            got = torch.load(rows[str(out.with_name(out.name + ("--bfloat16" if d == "bfloat16" else "")))]["file"])
            diff = float((got - ref).abs().max())
            measured[f"{name} ({d})"] = diff
            assert diff <= tol, (name, d, diff)
    print(json.dumps(measured, indent=1))


def _variant(tmp_path: Path, name: str, **changes) -> Path:
    d = tmp_path / name
    shutil.copytree(BASE, d, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize(
    "changes, first_mismatch",
    [
        ({"hidden_size": 256}, "hidden size 256, but the checkpoint's model.embed_tokens.weight is 256 x 128"),
        ({"num_hidden_layers": 4}, "4 layers, but the checkpoint has 2"),
        ({"intermediate_size": 512}, "model.layers.0.mlp.down_proj has in_features 512, out_features 128; the checkpoint's has 384, 128"),
        ({"model_type": "opt", "architectures": ["OPTForCausalLM"], "ffn_dim": 384, "word_embed_proj_dim": 128},
         "no linear module model.layers.0.mlp.down_proj (the checkpoint quantized one)"),
    ],
    ids=["hidden-size", "layers", "intermediate", "other-architecture"],
)
def test_a_wrong_base_is_refused_naming_the_first_mismatch(changes, first_mismatch, tmp_path):
    base = _variant(tmp_path, "base", **changes)
    for command in (["convert", fixture_path("inc-default-rtn-g32-asym"), "-o", tmp_path / "out", "--to", "gptq"],
                    ["inspect", fixture_path("inc-default-rtn-g32-asym")]):
        r = run_cli(*command, "--base-model", base)
        assert r.returncode == 2, r.stdout
        assert r.stderr == f"woqconv: error: {base}: is not this checkpoint's architecture: {first_mismatch}\n"
    assert not (tmp_path / "out").exists()


def test_a_base_that_is_not_a_model_is_refused(tmp_path):
    for bad, problem in ((tmp_path, "no config.json here"), (tmp_path / "missing", "not a directory and not a Hub repo id")):
        r = run_cli("convert", fixture_path("inc-default-rtn-g32-asym"), "-o", tmp_path / "out", "--to", "gptq", "--base-model", bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and problem in r.stderr, r.stderr


def test_inspect_says_what_is_missing(tmp_path):
    bare = woqconv.inspect(fixture_path("inc-default-rtn-g32-asym"))
    assert bare.architecture is None and bare.model_path_recorded == "base-fp16"
    r = run_cli("inspect", fixture_path("inc-default-rtn-g32-asym"))
    assert "not recorded in the checkpoint" in r.stdout and "base-fp16" in r.stdout
    given = woqconv.inspect(fixture_path("inc-default-rtn-g32-asym"), base_model=BASE)
    assert given.architecture == {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "num_hidden_layers": 2}
    assert given.architecture_from == f"{BASE} (given)"
    own = woqconv.inspect(fixture_path("ar-g32-asym-auto_gptq"))
    assert own.architecture_from == "config.json" and own.architecture["hidden_size"] == 128


@pytest.mark.slow
def test_verify_needs_the_base_to_run_inc_default(tmp_path):
    src = fixture_path("inc-default-gptq-actorder-g32-asym")
    woqconv.convert(src, tmp_path / "out", to="gptq-v2", base_model=BASE)
    r = run_cli("verify", tmp_path / "out", "--against", src)
    assert r.returncode == 2 and "--base-model" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    report = woqconv.verify(tmp_path / "out", against=src, base_model=BASE)
    assert report.passed, report.failures
    # INC's own load drops this act-order checkpoint's g_idx (FORMATS.md 3.4): woqconv's reading is the reference.
    assert report.reference.startswith("dense:")
    assert report.metrics["max_abs_logit_diff"] <= 1e-3
