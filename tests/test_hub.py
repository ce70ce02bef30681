"""Hub repos as sources and targets, against huggingface_hub itself.

Offline: a Hub cache written in huggingface_hub's real layout, read through its own resolution with
HF_HUB_OFFLINE=1. Online: tests/fake_hub.py's HTTP server on 127.0.0.1, with huggingface_hub pointed at
it by HF_ENDPOINT. The CLI runs in a subprocess so huggingface_hub reads that environment at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BASE, MANIFEST, fixture_path
from fake_hub import FakeHub, populate_cache, read_dir, tree_state

import woqconv
from woqconv.hub import CardFacts, render_card

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

GPTQ = "inc-hf-rtn-g32-asym"  # GPTQ v1 written by INC, no g_idx
ACT_ORDER = "inc-hf-gptq-actorder-g32-asym"  # scattered act-order g_idx (fixtures/manifest.json)
# Files a repo may hold that a conversion must neither download nor carry into OUT.
NOT_NEEDED = {"pytorch_model.bin": b"pickled duplicate weights", "hpu_model.safetensors": b"stale INC cache", "onnx/model.onnx": b"onnx"}


def repo_files(fixture: str) -> dict[str, bytes]:
    return {**read_dir(fixture_path(fixture)), **NOT_NEEDED}


def hub_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def run_cli(env: dict, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "woqconv", *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def requested(hub: FakeHub, name: str) -> list:
    return [r for r in hub.requests if r.path.endswith("/" + name)]


def test_offline_convert_reads_the_cache_and_never_the_network(tmp_path):
    home = tmp_path / "hf"
    sha = populate_cache(home / "hub", "org/tiny-gptq", repo_files(GPTQ))
    before = tree_state(home)
    ref = tmp_path / "ref"
    woqconv.convert(fixture_path(GPTQ), ref, to="awq")
    with FakeHub() as hub:  # knows no repo, and records any request that reaches it
        env = hub_env(home, hub.endpoint, HF_HUB_OFFLINE="1")
        r = run_cli(env, "convert", "org/tiny-gptq", "-o", tmp_path / "out", "--to", "awq", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["source"] == f"org/tiny-gptq@{sha}"
        # The same bytes as converting the local directory; nothing the conversion does not need.
        assert read_dir(tmp_path / "out") == read_dir(ref)

        r = run_cli(env, "inspect", "org/tiny-gptq", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        offline = json.loads(r.stdout)
        local = woqconv.inspect(fixture_path(GPTQ)).to_dict()
        assert offline.pop("path") == f"org/tiny-gptq@{sha}"
        local.pop("path")
        assert offline == local  # offline, the cached snapshot is inspected in full

        r = run_cli(env, "convert", "org/not-cached", "-o", tmp_path / "none", "--to", "awq", cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.startswith("woqconv: error: org/not-cached: no such local directory, and as a Hub repo id: not in the local Hub cache") and r.stderr.count("\n") == 1
        assert not (tmp_path / "none").exists()
        assert hub.requests == []
    assert tree_state(home) == before  # the cache is only read: same files, links, hashes, mtimes


def sharded(files: dict[str, bytes]) -> dict[str, bytes]:
    """The checkpoint split in two shards with a model.safetensors.index.json, as transformers shards."""
    from safetensors.torch import load, save

    files = dict(files)
    tensors = load(files.pop("model.safetensors"))
    names = sorted(tensors)
    parts = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    weight_map = {}
    for shard, members in parts.items():
        files[shard] = save({n: tensors[n] for n in members}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, shard))
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


@pytest.mark.parametrize("fixture, layout", [(ACT_ORDER, "single"), ("ar-g32-asym-auto_gptq", "sharded")])
def test_remote_inspect_reads_headers_by_range_only(tmp_path, fixture, layout):
    files = repo_files(fixture) if layout == "single" else sharded(repo_files(fixture))
    local_copy = tmp_path / "local"
    for name, data in files.items():
        if name not in NOT_NEEDED:
            (local_copy / name).parent.mkdir(parents=True, exist_ok=True)
            (local_copy / name).write_bytes(data)
    with FakeHub() as hub:
        sha = hub.add_repo("org/repo", files)
        env = hub_env(tmp_path / "hf", hub.endpoint)
        r = run_cli(env, "inspect", "org/repo", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        remote = json.loads(r.stdout)
        weights = [q for q in hub.requests if q.path.endswith(".safetensors")]
        assert weights and all(q.method == "HEAD" or q.headers.get("range", "").startswith("bytes=0-") for q in weights)
        assert not any(requested(hub, n.split("/")[-1]) for n in NOT_NEEDED if n != "hpu_model.safetensors")
        if layout == "single":
            text = run_cli(env, "inspect", "org/repo", "--layers", cwd=tmp_path)
            assert text.returncode == 0, text.stderr
            assert "unknown: needs tensor data" in text.stdout

    local = woqconv.inspect(local_copy).to_dict()
    assert remote["path"] == f"org/repo@{sha}"
    assert remote["needs_tensor_data"] == ["sym", "zero_point_convention", "g_idx"]
    assert (remote["sym"], remote["g_idx"]) == (None, "unknown") and local["g_idx"] == MANIFEST[fixture]["g_idx"]
    same = ("format", "producer", "quant_method", "packing_format", "bits", "group_size", "sym_declared", "zero_point_convention",
            "zero_point_convention_declared", "desc_act_declared", "quantized_modules", "unquantized_tensors",
            "quantized_parameters", "total_bytes", "bits_per_weight", "scales_dtypes", "shards")
    assert {k: remote[k] for k in same} == {k: local[k] for k in same}
    for rl, ll in zip(remote["layers"], local["layers"], strict=True):
        assert (rl.pop("g_idx"), rl.pop("sym")) == ("unknown", None)
        ll.pop("g_idx"), ll.pop("sym")
        assert rl == ll


def test_convert_from_hub_verify_and_push_as_pull_request(tmp_path):
    out = tmp_path / "out"
    with FakeHub() as hub:
        sha = hub.add_repo("org/tiny-gptq", repo_files(GPTQ))
        env = hub_env(tmp_path / "hf", hub.endpoint, HF_TOKEN="hf_test_token")
        args = ["convert", "org/tiny-gptq", "-o", str(out), "--to", "gptq-v2", "--verify", "--push-to-hub", "me/tiny-gptq-v2", "--create-pr", "--format", "json"]
        r = run_cli(env, *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "%|" not in r.stderr  # no progress bars under --format json
        data = json.loads(r.stdout)
        assert data["verify"]["passed"] and data["push"]["pr_url"] == f"{hub.endpoint}/me/tiny-gptq-v2/discussions/1"
        assert data["source"] == data["verify"]["against"] == f"org/tiny-gptq@{sha}"
        assert "woqconv-hub-" not in r.stdout  # the temporary view is never named

        # Downloaded only what conversion reads.
        fetched = {q.path.rsplit("/", 1)[-1] for q in hub.requests if q.method == "GET" and "/resolve/" in q.path}
        assert fetched == set(read_dir(fixture_path(GPTQ)))
        # Every uploaded file, the card included, is byte for byte what OUT holds; main is untouched.
        pr = hub.files("me/tiny-gptq-v2", "refs/pr/1")
        assert {k: v for k, v in pr.items() if k != ".gitattributes"} == read_dir(out)
        assert set(hub.files("me/tiny-gptq-v2")) == {".gitattributes"}
        weights = (out / "model.safetensors").read_bytes()
        puts = [q for q in hub.requests if q.method == "PUT"]
        assert [q.body for q in puts] == [weights]  # the weights went through LFS, the JSON files inline
        commit = next(p for p in hub.commit_payloads)
        lfs = {i["value"]["path"]: i["value"]["oid"] for i in commit if i["key"] == "lfsFile"}
        assert lfs == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
        writes = [q for q in hub.requests if q.method in ("POST", "PUT") and not q.path.startswith("/_lfs/")]
        assert writes and all(q.headers.get("authorization") == "Bearer hf_test_token" for q in writes)

        # A local source, pushed to a branch of the now existing repo.
        r = run_cli(env, "convert", fixture_path(GPTQ), "-o", tmp_path / "local", "--to", "awq", "-q", "--push-to-hub", "me/tiny-gptq-v2", "--push-revision", "awq", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        branch = hub.files("me/tiny-gptq-v2", "awq")
        assert {k: v for k, v in branch.items() if k != ".gitattributes"} == read_dir(tmp_path / "local")
        assert f"awq checkpoint converted from `{fixture_path(GPTQ)}` (a local checkpoint)" in branch["README.md"].decode()
        assert hub.files("me/tiny-gptq-v2", "refs/pr/1") == pr

    card = pr["README.md"].decode()
    v = data["verify"]
    for line in (
        f"gptq-v2 checkpoint converted from [org/tiny-gptq](/org/tiny-gptq) at commit `{sha}` by woqconv {woqconv.__version__}.",
        "| source | gptq |",
        "| this repo | gptq-v2 |",
        "Lossless: every one of the 14 quantized layers carries the source's codes, zero points and scales bit for bit.",
        f"`woqconv verify` on {v['device']} with {v['loader']}: **passed**.",
        "| weights | 14 layers | ok | every layer bit-identical to the source |",
        'model = AutoModelForCausalLM.from_pretrained("me/tiny-gptq-v2")',
        shlex.join(["woqconv", *args]),
    ):
        assert line + "\n" in card, line


def test_push_dry_run_shows_the_card_and_sends_nothing(tmp_path):
    with FakeHub() as hub:
        hub.add_repo("org/tiny-gptq", repo_files(GPTQ))
        env = hub_env(tmp_path / "hf", hub.endpoint)
        r = run_cli(env, "convert", "org/tiny-gptq", "-o", tmp_path / "out", "--to", "hpu", "--allow-bf16", "--dry-run", "--push-to-hub", "me/tiny-hpu", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert not [q for q in hub.requests if q.method in ("POST", "PUT")]
    assert "would upload to me/tiny-hpu" in r.stdout
    assert 'model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)' in r.stdout
    assert not (tmp_path / "out").exists()


def test_migrate_three_repos_one_refused_then_resume(tmp_path):
    listing = tmp_path / "repos.txt"
    listing.write_text("org/rtn-sym\n# act-order cannot go to hpu without requantizing\norg/act-order\n\norg/ar-asym  # AutoRound\n")
    root = tmp_path / "migrated"
    args = ["migrate", listing, "--to", "hpu", "--allow-bf16", "-o", root, "--push-to-hub-pattern", "me/{name}-{target}", "--format", "json"]
    with FakeHub() as hub:
        hub.add_repo("org/rtn-sym", repo_files("inc-hf-rtn-g32-sym"))
        hub.add_repo("org/act-order", repo_files(ACT_ORDER))
        hub.add_repo("org/ar-asym", repo_files("ar-g32-asym-auto_gptq"))
        env = hub_env(tmp_path / "hf", hub.endpoint)
        r = run_cli(env, *args, cwd=tmp_path)
        assert r.returncode == 1, r.stderr  # not everything succeeded
        first = json.loads(r.stdout)
        assert first["counts"] == {"succeeded": 2, "refused": 1, "failed": 0}
        by_repo = {e["repo_id"]: e for e in first["entries"]}
        assert "scattered act-order g_idx cannot be expressed in hpu" in by_repo["org/act-order"]["reason"]
        for name in ("rtn-sym", "ar-asym"):
            e = by_repo[f"org/{name}"]
            assert e["status"] == "succeeded" and e["verified"] and e["pushed_to"] == f"me/{name}-hpu"
            pushed = hub.files(f"me/{name}-hpu")
            assert {k: v for k, v in pushed.items() if k != ".gitattributes"} == read_dir(Path(e["output"]))
            assert "hpu_model.safetensors" in pushed
        state = json.loads((root / "woqconv-migrate.json").read_text())
        assert {k: v["status"] for k, v in state["repos"].items()} == {"org/rtn-sym": "succeeded", "org/act-order": "refused", "org/ar-asym": "succeeded"}

        hub.requests.clear()
        commits = len(hub.commit_payloads)
        r = run_cli(env, *args[:-2], cwd=tmp_path)  # the rerun, as a table
        assert r.returncode == 1, r.stderr
        assert r.stdout.count("(earlier run)") == 2 and "refused" in r.stdout
        assert len(hub.commit_payloads) == commits  # nothing pushed again
        touched = {q.path.split("/")[4] if q.path.startswith("/api/") else q.path.split("/")[2] for q in hub.requests
                   if q.path.startswith(("/api/models/", "/org/"))}
        assert touched == {"act-order"}  # only the unfinished repo was looked at again


def test_hub_options_misused_are_one_line_errors(tmp_path):
    env = hub_env(tmp_path / "hf", "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    listing = tmp_path / "repos.txt"
    listing.write_text("org/fine\nnot a repo id\n")
    cases = [
        (["migrate", listing, "--to", "awq", "-o", tmp_path / "root"], f"woqconv: error: {listing}: line 2: 'not a repo id' is not a Hub repo id"),
        (["convert", fixture_path(GPTQ), "-o", tmp_path / "out", "--to", "awq", "--create-pr"], "woqconv: error: --push-revision and --create-pr go with --push-to-hub"),
        (["convert", fixture_path(GPTQ), "-o", tmp_path / "out", "--to", "awq", "--revision", "main"], "woqconv: error: --revision applies to a Hub repo id"),
    ]
    for args, message in cases:
        r = run_cli(env, *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repos.txt"]


def test_inc_default_repos_with_a_hub_base_model(tmp_path):
    """INC's default format from the Hub, with --base-model a Hub repo: only the base's config, generation
    config and tokenizer are downloaded from it, never its weights; convert (+ verify) and migrate use it."""
    with FakeHub() as hub:
        hub.add_repo("org/tiny-llama", read_dir(BASE))  # the original model, weights and all
        hub.add_repo("org/llama-inc-rtn", read_dir(fixture_path("inc-default-rtn-g32-asym")))
        hub.add_repo("org/llama-inc-awq", read_dir(fixture_path("inc-default-awq-g32-asym")))
        env = hub_env(tmp_path / "hf", hub.endpoint)
        r = run_cli(env, "convert", "org/llama-inc-rtn", "-o", tmp_path / "out", "--to", "gptq", "--format", "json", cwd=tmp_path)
        assert r.returncode == 2 and "--base-model" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        r = run_cli(env, "convert", "org/llama-inc-rtn", "-o", tmp_path / "out", "--to", "gptq", "--base-model", "org/tiny-llama",
                    "--verify", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["verify"]["passed"] and data["base_model"].startswith("org/tiny-llama@")
        fetched = {tuple(q.path.split("/")[1:3]) + (q.path.rsplit("/", 1)[-1],) for q in hub.requests if q.method == "GET" and "/resolve/" in q.path}
        assert {f for org, repo, f in fetched if repo == "tiny-llama"} == {"config.json", "generation_config.json", "tokenizer.json",
                                                                             "tokenizer_config.json"}
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                                         "quantize_config.json", "tokenizer.json", "tokenizer_config.json"]
        listing = tmp_path / "repos.txt"
        listing.write_text("org/llama-inc-rtn\norg/llama-inc-awq\n")
        r = run_cli(env, "migrate", listing, "--to", "inc-hf", "-o", tmp_path / "migrated", "--base-model", "org/tiny-llama", "--no-run",
                    "--format", "json", cwd=tmp_path)
        report = json.loads(r.stdout)
        by_repo = {e["repo_id"]: e for e in report["entries"]}
        assert by_repo["org/llama-inc-rtn"]["status"] == "succeeded" and by_repo["org/llama-inc-rtn"]["verified"], by_repo
        # AWQ's MulLinear wrappers have no place in inc-hf: refused for what the layers are, not for the base.
        assert by_repo["org/llama-inc-awq"]["status"] == "refused" and "MulLinear" in by_repo["org/llama-inc-awq"]["reason"]


CARD_RUNNER = r"""
import re, sys, huggingface_hub, torch
from woqconv.runtime.hpu_emulation import emulated_hpu
from woqconv.runtime.inc_hpu import counting_inc_repacks
card, local = open(sys.argv[1]).read(), sys.argv[2]
code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
huggingface_hub.snapshot_download = lambda repo_id, **kw: local  # the pushed repo is the local output
scope = {}
with counting_inc_repacks() as repacks, emulated_hpu():
    exec(code, scope)
    logits = scope["model"](torch.tensor([[1, 5, 9, 33]])).logits
print(repacks[0], bool(torch.isfinite(logits).all()))
"""


@pytest.mark.parametrize("target", ["inc", "hpu-default"])
def test_model_card_code_loads_inc_default_outputs(target, tmp_path):
    """The card's "How to load" code, run as written (the Hub download pointed at the output): INC loads
    an inc output, and an hpu-default output on the (emulated) Gaudi without repacking a layer."""
    out = tmp_path / "out"
    report = woqconv.convert(fixture_path("inc-default-rtn-g32-asym"), out, to=target, base_model=BASE, allow_bf16=True)
    card = render_card(CardFacts(repo_id="me/llama-inc", source="org/llama-inc", source_commit="0" * 40, convert=report.to_dict(),
                                 verify=None, version="test", command="woqconv convert ..."))
    (tmp_path / "README.md").write_text(card)
    r = subprocess.run([sys.executable, "-c", CARD_RUNNER, str(tmp_path / "README.md"), str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    repacked, finite = r.stdout.split()[-2:]
    assert finite == "True"
    if target == "hpu-default":
        assert repacked == "0"  # the card's Gaudi call reads the pre-baked cache


OPENVINO = "ov-optimum-qwen2-int4-asym-g64-r06"  # optimum-cli's export, as a *-int4-ov repo holds it (with README.md)


def test_openvino_repo_from_the_offline_cache_inspects_and_converts(tmp_path):
    """An OpenVINO repo as optimum-intel pushes it: the IR, openvino_config.json, the tokenizer as IR and as
    Hugging Face files. Its format names the files it reads, so all of them come from the cache."""
    home = tmp_path / "hf"
    files = {**repo_files(OPENVINO), "README.md": b"---\nlicense: apache-2.0\n---\n"}
    sha = populate_cache(home / "hub", "org/tiny-int4-ov", files)
    ref = tmp_path / "ref"
    woqconv.convert(fixture_path(OPENVINO), ref, to="gptq-v2")
    with FakeHub() as hub:
        env = hub_env(home, hub.endpoint, HF_HUB_OFFLINE="1")
        r = run_cli(env, "inspect", "org/tiny-int4-ov", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert (report["path"], report["format"], report["quantized_modules"]) == (f"org/tiny-int4-ov@{sha}", "openvino", 14)
        assert [row["mode"] for row in report["compression_table"]["rows"]] == ["int8_asym, per-channel", "int4_asym, group size 64"]
        r = run_cli(env, "convert", "org/tiny-int4-ov", "-o", tmp_path / "out", "--to", "gptq-v2", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert hub.requests == []
    assert read_dir(tmp_path / "out") == read_dir(ref)  # the same bytes as converting the local export
    assert {"openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml", "tokenizer.json"} <= set(read_dir(ref))


def test_openvino_repo_online_is_fetched_and_inspected_in_full(tmp_path):
    """An IR has no header to range-read (which constants are weights is known from the graph): inspect
    fetches the format's files into the cache and reads them, and names nothing it does not need."""
    files = {**repo_files(OPENVINO), "README.md": b"card"}
    with FakeHub() as hub:
        sha = hub.add_repo("org/tiny-int4-ov", files)
        env = hub_env(tmp_path / "hf", hub.endpoint)
        r = run_cli(env, "inspect", "org/tiny-int4-ov", "--format", "json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        got = {q.path.rsplit("/", 1)[-1] for q in hub.requests if q.method == "GET"}
    report = json.loads(r.stdout)
    local = woqconv.inspect(fixture_path(OPENVINO)).to_dict()
    assert report.pop("path") == f"org/tiny-int4-ov@{sha}"
    local.pop("path")
    assert report == local
    assert {"openvino_model.xml", "openvino_model.bin"} <= got and not got & {"pytorch_model.bin", "README.md", "model.onnx"}


def test_python_api_converts_a_hub_repo_id(tmp_path):
    """woqconv.convert("org/name", ...) from Python: the same pipeline as the CLI (a cached snapshot here)."""
    home = tmp_path / "hf"
    sha = populate_cache(home / "hub", "org/tiny-gptq", repo_files(GPTQ))
    code = ("import sys, woqconv; r = woqconv.convert('org/tiny-gptq', sys.argv[1], to='awq'); "
            "print(r.source, r.lossless, r.layers_converted)")
    with FakeHub() as hub:
        env = hub_env(home, hub.endpoint, HF_HUB_OFFLINE="1")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
        assert hub.requests == []
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"org/tiny-gptq@{sha}", "True", "14"]
    ref = tmp_path / "ref"
    woqconv.convert(fixture_path(GPTQ), ref, to="awq")
    assert read_dir(tmp_path / "out") == read_dir(ref)


def test_model_card_code_loads_an_nf4_output(tmp_path):
    """Every target's card says how to load its output; the bitsandbytes one, run as written (with the repo id
    replaced by the local output), loads through transformers + bitsandbytes and computes finite logits."""
    out = tmp_path / "out"
    report = woqconv.convert(fixture_path("bnb-nf4-fp16"), out, to="nf4")
    card = render_card(CardFacts(repo_id=str(out), source="org/llama-nf4", source_commit=None, convert=report.to_dict(),
                                 verify=None, version="test", command="woqconv convert ..."))
    code = card.split("## How to load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    runner = f"import torch\n{code}\nprint(type(model.model.layers[0].mlp.up_proj).__name__, " \
             "bool(torch.isfinite(model(torch.tensor([[1, 5, 9, 33]])).logits).all()))"
    r = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["Linear4bit", "True"]
