"""Conversion without torch (convert/direct.py): for plain 4-bit GPTQ checkpoints and the targets gptq,
gptq-v2, inc-hf and awq, the numpy path must write exactly the torch path's bytes and report; for
everything else, and for anything wrong, it must step aside before writing, and the torch path plans,
refuses and errs as before. That its outputs load in the real loaders is tested where every target's
output is (test_loaders.py, test_autoround_exports.py, test_inc.py): those conversions now take this path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, MANIFEST, fixture_path
from corpus import CASES, GPTQ, build, edit_tensors, random_small_tensors, shard
from safetensors.torch import load_file

import woqconv
from woqconv import packing
from woqconv.convert import direct
from woqconv.errors import WoqconvError

ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def takes_direct_path(name: str, to: str) -> bool:
    """What the numpy path covers, said from the manifest: 4-bit GPTQ (v1 or v2), one precision, no
    act-order, and no zero point 0 for ``gptq``, which refuses it (inc-hf stores it INC's way)."""
    e = MANIFEST.get(name, {})
    return (e.get("family") in ("gptq-v1", "gptq-v2") and e["bits"] == 4 and not e.get("layer_config")
            and e["g_idx"] in ("none", "trivial") and not (to == "gptq" and e["zero_fields_z0"]))


CASES_DIRECT = [(n, t) for n in ALL_FIXTURES for t in direct.TARGET_NAMES if takes_direct_path(n, t)]


def _plans(src, to, convention="auto") -> bool:
    plan = direct.plan_direct(src, to, convention)
    if plan is not None:
        plan.ckpt.close()
    return plan is not None


def _outcome(src, out, monkeypatch, *, numpy_path: bool, **kw) -> tuple[str, object]:
    """A conversion's report (its timing and output path left out) or its error line, by one path."""
    with monkeypatch.context() as m:
        m.setattr(direct, "ENABLED", numpy_path)
        try:
            report = woqconv.convert(src, out, **kw).to_dict()
        except WoqconvError as e:
            return type(e).__name__, e.one_line()
    report.pop("seconds")
    report.pop("output")
    return "ok", report


def _files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())} if root.exists() else {}


def _both(src, tmp_path, monkeypatch, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    a, b = tmp_path / "numpy", tmp_path / "torch"
    got = _outcome(src, a, monkeypatch, numpy_path=True, **kw)
    want = _outcome(src, b, monkeypatch, numpy_path=False, **kw)
    return got, want, _files(a), _files(b)


def test_the_direct_path_covers_what_it_should():
    assert len(CASES_DIRECT) >= 60
    for name in ALL_FIXTURES:
        for to in direct.TARGET_NAMES:
            assert _plans(fixture_path(name), to) == takes_direct_path(name, to), (name, to)


@pytest.mark.parametrize("name,to", CASES_DIRECT)
def test_output_and_report_are_the_torch_paths(name, to, tmp_path, monkeypatch):
    got, want, a, b = _both(fixture_path(name), tmp_path, monkeypatch, to=to)
    assert got == want and got[0] == "ok"
    assert a == b and a


@pytest.mark.parametrize("convention", ["v1", "v2"])
@pytest.mark.parametrize("to", ["gptq-v2", "awq"])
def test_a_forced_convention_is_read_as_the_torch_path_reads_it(convention, to, tmp_path, monkeypatch):
    src = fixture_path("ar-g32-sym-auto_gptq")
    assert _plans(src, to, convention)
    got, want, a, b = _both(src, tmp_path, monkeypatch, to=to, zero_point_convention=convention)
    assert got == want and a == b


def test_a_sharded_source_keeps_its_shards_and_index(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    assert len(shard(src)) > 1
    for to in direct.TARGET_NAMES:
        assert _plans(src, to)
        got, want, a, b = _both(src, tmp_path / to, monkeypatch, to=to)
        assert got == want and got[0] == "ok" and a == b and "model.safetensors.index.json" in a


def test_a_dry_run_reports_the_same_and_writes_nothing(tmp_path, monkeypatch):
    got, want, a, b = _both(fixture_path(GPTQ), tmp_path, monkeypatch, to="awq", dry_run=True)
    assert got == want and got[1]["dry_run"] and not a and not b


def test_awq_output_holds_autorounds_own_awq_tensors(tmp_path):
    """The numpy re-layout against the real library: AutoRound's auto_awq export of the same run."""
    assert _plans(fixture_path("ar-g32-asym-auto_gptq"), "awq")
    woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "out", to="awq")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g32-asym-auto_awq") / "model.safetensors")
    layer_tensors = [n for n in theirs if n.endswith((".qweight", ".qzeros", ".scales"))]
    assert len(layer_tensors) == 42
    for n in layer_tensors:
        assert torch.equal(ours[n], theirs[n]), n


def test_gptq_v2_output_holds_autorounds_own_gptqmodel_tensors(tmp_path):
    assert _plans(fixture_path("ar-g128-asym-auto_gptq"), "gptq-v2")
    woqconv.convert(fixture_path("ar-g128-asym-auto_gptq"), tmp_path / "out", to="gptq-v2")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g128-asym-auto_round_gptqmodel") / "model.safetensors")
    compared = [n for n in theirs if n.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))]
    assert len(compared) == 56
    for n in compared:
        assert torch.equal(ours[n], theirs[n]), n


@pytest.mark.parametrize("name", ["ar-zp0-g32-asym-auto_round_gptqmodel", "inc-hf-rtn-zp0-g32-asym"])
def test_zero_point_zero_to_inc_hf_is_stored_incs_way_and_reported(name, tmp_path, monkeypatch):
    assert _plans(fixture_path(name), "inc-hf")
    got, want, a, b = _both(fixture_path(name), tmp_path, monkeypatch, to="inc-hf")
    assert got == want and a == b
    assert any("zero points of 0 stored as all-ones" in c for cs in got[1]["layer_changes"].values() for c in cs)


def test_awq_gets_no_workers_and_gptq_targets_keep_the_copy_head_start(tmp_path, monkeypatch):
    from woqconv.convert import ahead, head_start
    from woqconv.safetensors_io import SafetensorsWriter

    monkeypatch.setattr(ahead, "MIN_BYTES", 0)
    started, prefilled = [], []
    real_start, real_init = head_start.start, SafetensorsWriter.__init__
    monkeypatch.setattr(head_start, "start", lambda *a, **k: started.append(real_start(*a, **k)) or started[-1])

    def init(self, *a, **k):
        real_init(self, *a, **k)
        prefilled.append(self.prefilled_from is not None)

    monkeypatch.setattr(SafetensorsWriter, "__init__", init)
    woqconv.convert(fixture_path(GPTQ), tmp_path / "awq", to="awq")
    woqconv.convert(fixture_path(GPTQ), tmp_path / "v2", to="gptq-v2")
    assert started[0] is None and isinstance(started[1], head_start.HeadStart)
    assert prefilled == [False, True]


@pytest.mark.parametrize("name,to", [
    ("inc-hf-gptq-actorder-g32-asym", "awq"),  # scattered act-order: refused (or requantized) by the torch path
    ("inc-hf-rtn-zp0-g32-asym", "gptq"),  # z = 0 cannot be v1: refused, naming the groups
    ("ar-mixed-g32-asym-auto_gptq", "gptq-v2"),  # mixed precision: GPTQModel's dynamic
    ("ar-w8-g32-asym-auto_gptq", "gptq-v2"),
    ("ar-g32-asym-auto_awq", "gptq"),
])
def test_what_it_does_not_take_goes_to_the_torch_path(name, to, tmp_path, monkeypatch):
    src = fixture_path(name)
    assert not _plans(src, to)
    got, want, a, b = _both(src, tmp_path, monkeypatch, to=to)
    assert got == want and a == b


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.fixture == GPTQ))
def test_bad_input_gives_the_torch_paths_error(name, tmp_path, monkeypatch):
    src, _, named = build(CASES[name], tmp_path)
    got, want, a, b = _both(src, tmp_path, monkeypatch, to="awq")
    assert got == want and got[0] != "ok" and not a and not b


def _odd_small_tensors(t: dict) -> None:
    """An int64 g_idx (written back as int32), a bf16 scale tensor, a layer without g_idx, a bias."""
    names = sorted(n[: -len(".qzeros")] for n in t if n.endswith(".qzeros"))
    t[f"{names[0]}.g_idx"] = t[f"{names[0]}.g_idx"].to(torch.int64)
    t[f"{names[1]}.scales"] = t[f"{names[1]}.scales"].to(torch.bfloat16)
    del t[f"{names[2]}.g_idx"]
    t[f"{names[3]}.bias"] = torch.arange(t[f"{names[3]}.scales"].shape[1], dtype=torch.float16)


@pytest.mark.parametrize("to", direct.TARGET_NAMES)
def test_odd_but_valid_small_tensors(to, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    edit_tensors(_odd_small_tensors)(src)
    # INC's loader casts scales to fp16: a bf16 layer is the torch path's to measure and warn about.
    assert _plans(src, to) == (to != "inc-hf")
    got, want, a, b = _both(src, tmp_path, monkeypatch, to=to)
    assert got == want and got[0] == "ok" and a == b


@pytest.mark.parametrize("g_idx", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_random_small_tensors_give_the_torch_paths_answer(seed, g_idx, tmp_path, monkeypatch):
    """Random qzeros (every bit pattern, or one symmetric value), g_idx (trivial, block-permuted, scattered,
    out of range) and the odd infinite scale: the numpy path takes what it can and matches the torch path
    byte for byte; the rest it leaves to the torch path, which converts, refuses or errs."""
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    edit_tensors(random_small_tensors(seed, g_idx=g_idx))(src)
    taken = 0
    for to in direct.TARGET_NAMES:
        taken += _plans(src, to)
        got, want, a, b = _both(src, tmp_path / to, monkeypatch, to=to)
        assert got == want and a == b, to
    # With g_idx left trivial and every scale finite, only gptq's refusal of z = 0 sends one elsewhere.
    assert taken >= (3 if not g_idx and seed % 6 != 5 else 0)


@pytest.mark.parametrize("to", direct.TARGET_NAMES)
def test_cli_conversion_imports_no_torch(to, tmp_path, monkeypatch):
    code = (
        "import sys\n"
        "from woqconv.cli import main\n"
        f"sys.argv = ['woqconv', 'convert', {str(fixture_path(GPTQ))!r}, '-o', {str(tmp_path / 'cli')!r}, '--to', {to!r},"
        " '--format', 'json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["lossless"]
    _, want = _outcome(fixture_path(GPTQ), tmp_path / "torch", monkeypatch, numpy_path=False, to=to)
    assert _files(tmp_path / "cli") == _files(tmp_path / "torch")


# -- the packing math, against the torch functions it stands in for ---------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("delta", [1, -1])
def test_shift_fields_is_v1_decode_or_encode_on_packed_words(bits, delta):
    g = torch.Generator().manual_seed(bits)
    z = torch.randint(0, 1 << bits, (64, 6), dtype=torch.uint8, generator=g)  # [out, groups]
    v2 = packing.pack(z.T.contiguous(), bits, dim=1).contiguous()
    v1 = packing.pack(packing.v1_encode_zeros(z, bits).T.contiguous(), bits, dim=1).contiguous()
    src, want = (v1, v2) if delta == 1 else (v2, v1)
    got = packing.shift_fields(src.numpy().view("u1").reshape(-1), bits, delta).view("<i4").reshape(want.shape)
    assert torch.equal(torch.from_numpy(got.copy()), want)


@pytest.mark.parametrize("delta", [0, 1])
@pytest.mark.parametrize("shape", [(1, 8), (5, 64), (3, 11008)])
def test_gptq4_zeros_to_awq_is_unpack_then_pack_in_awq_order(delta, shape):
    groups, out = shape
    z = torch.randint(0, 16, (out, groups), dtype=torch.uint8, generator=torch.Generator().manual_seed(out))
    stored = packing.v1_encode_zeros(z, 4) if delta else z
    qzeros = packing.pack(stored.T.contiguous(), 4, dim=1).contiguous()
    got = packing.gptq4_zeros_to_awq(qzeros.numpy().view("u1").reshape(-1), groups, out, delta)
    want = packing.pack(z.T.contiguous(), 4, dim=1, slot_order=packing.AWQ_ORDER)
    assert torch.equal(torch.from_numpy(got.copy()), want)
