"""Layers written by moving bytes (tensor_ops: copy, shift zero-point fields, re-lay out words): which
layers the plan routes that way, that their bytes are what the real producers write, that nothing
imports torch for them, and that a shard whose header the output keeps is copied whole. That the
outputs load in the real loaders is tested where every target's output is (test_loaders.py,
test_autoround_exports.py, test_inc.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, MANIFEST, fixture_path
from corpus import GPTQ, shard
from safetensors.torch import load_file

import woqconv
from woqconv.kernels import packing
from woqconv.convert.plan import plan_conversion
from woqconv.io.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec
from woqconv.source import open_checkpoint
from woqconv.tensor_ops import Compute, Copy

ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
BYTE_TARGETS = ("gptq", "gptq-v2", "inc-hf", "awq", "compressed-tensors")


def routed_from_manifest(name: str, to: str) -> bool:
    """Which conversions move bytes only, said from the manifest: 4-bit GPTQ (v1 or v2), one precision, no
    act-order, and no zero point 0 for ``gptq``, which refuses it (inc-hf stores it INC's way); for
    compressed-tensors, 4-bit AWQ GEMM too."""
    e = MANIFEST.get(name, {})
    families = ("gptq-v1", "gptq-v2", "awq-gemm") if to == "compressed-tensors" else ("gptq-v1", "gptq-v2")
    return (e.get("family") in families and e["bits"] == 4 and not e.get("layer_config")
            and e["g_idx"] in ("none", "trivial") and not (to == "gptq" and e["zero_fields_z0"]))


def _plan(src, to, **kw):
    """The plan's ops (None when the conversion is refused or the source unreadable), and whether each shard is copied whole."""
    try:
        with open_checkpoint(src, read_layers=False) as source:
            plan = plan_conversion(source, to, **kw)
            return [op for s in plan.shards for op in s.ops.values()], [s.copy_whole for s in plan.shards]
    except woqconv.errors.WoqconvError:
        return None, None


def _moves_bytes_only(src, to) -> bool:
    ops, _ = _plan(src, to)
    return ops is not None and not any(isinstance(op, Compute) for op in ops)


def test_the_plan_routes_exactly_the_plain_gptq_layers():
    routed = 0
    for name in ALL_FIXTURES:
        for to in BYTE_TARGETS:
            want = routed_from_manifest(name, to)
            assert _moves_bytes_only(fixture_path(name), to) == want, (name, to)
            routed += want
    assert routed >= 60


def test_awq_output_holds_autorounds_own_awq_tensors(tmp_path):
    """The byte re-layout against the real library: AutoRound's auto_awq export of the same run."""
    assert _moves_bytes_only(fixture_path("ar-g32-asym-auto_gptq"), "awq")
    woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "out", to="awq")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g32-asym-auto_awq") / "model.safetensors")
    layer_tensors = [n for n in theirs if n.endswith((".qweight", ".qzeros", ".scales"))]
    assert len(layer_tensors) == 42
    for n in layer_tensors:
        assert torch.equal(ours[n], theirs[n]), n


def test_gptq_v2_output_holds_autorounds_own_gptqmodel_tensors(tmp_path):
    """The v1 -> v2 field shift, over a whole-file copy, against AutoRound's GPTQModel export of the same run."""
    src = fixture_path("ar-g128-asym-auto_gptq")
    ops, whole = _plan(src, "gptq-v2")
    assert not any(isinstance(op, Compute) for op in ops) and whole == [True]
    woqconv.convert(src, tmp_path / "out", to="gptq-v2")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g128-asym-auto_round_gptqmodel") / "model.safetensors")
    compared = [n for n in theirs if n.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))]
    assert len(compared) == 56
    for n in compared:
        assert torch.equal(ours[n], theirs[n]), n


@pytest.mark.parametrize("name", ["ar-zp0-g32-asym-auto_round_gptqmodel", "inc-hf-rtn-zp0-g32-asym"])
def test_zero_point_zero_to_inc_hf_is_stored_incs_way_and_reported(name, tmp_path):
    assert _moves_bytes_only(fixture_path(name), "inc-hf")
    report = woqconv.convert(fixture_path(name), tmp_path / "out", to="inc-hf")
    assert any("zero points of 0 stored as all-ones" in c for cs in report.layer_changes.values() for c in cs)
    # INC's own loader reads z = 0 from an all-ones v1 field (modular): the fields the source stored as 0 (v2).
    theirs = load_file(fixture_path(name) / "model.safetensors")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    v2 = MANIFEST[name]["family"] == "gptq-v2"
    for n in (n for n in theirs if n.endswith(".qzeros")):
        stored = packing.unpack(theirs[n], 4, dim=1)
        z = stored if v2 else packing.v1_decode_zeros(stored, 4)
        assert torch.equal(packing.unpack(ours[n], 4, dim=1), packing.v1_encode_zeros(z, 4)), n


def test_a_sharded_source_keeps_its_shards_and_index(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    assert len(shard(src)) > 1
    _, whole = _plan(src, "awq")
    assert not any(whole)  # every qweight is re-laid out: nothing to keep
    for to in BYTE_TARGETS:
        out = tmp_path / to
        woqconv.convert(src, out, to=to)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in out.glob("*.safetensors"))


def test_hpu_and_inc_compute_and_copy_nothing_whole():
    ops, whole = _plan(fixture_path(GPTQ), "hpu", allow_bf16=True)
    assert any(isinstance(op, Compute) for op in ops) and not any(whole)  # a companion file: per-layer copies overlap its re-layouts
    # The hpu primary file keeps GPTQ's packing: its codes are copied unread, the rest computed.
    assert any(isinstance(op, Copy) and op.source.endswith(".qweight") for op in ops)
    ops, whole = _plan(fixture_path(GPTQ), "inc")
    assert not any(whole)  # a torch.save file


def test_a_header_not_in_save_file_layout_is_rewritten_not_copied(tmp_path):
    """Reordered header keys: the tensors are the same, the header is not the one the writer writes, so
    no shard is copied whole, and the output is still the canonical file."""
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    f = src / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    reordered = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    reordered += b" " * (n - len(reordered))
    f.write_bytes(raw[:8] + reordered + raw[8 + n :])
    _, whole = _plan(src, "gptq-v2")
    assert whole == [False]
    woqconv.convert(src, tmp_path / "out", to="gptq-v2")
    woqconv.convert(fixture_path(GPTQ), tmp_path / "canonical", to="gptq-v2")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "canonical" / "model.safetensors").read_bytes()


def test_a_whole_copy_needs_the_same_header(tmp_path):
    with SafetensorsFile(fixture_path(GPTQ) / "model.safetensors") as source:
        specs = [TensorSpec(t.name, t.dtype, t.shape) for t in source.tensors.values()]
        with pytest.raises(ValueError, match="cannot be copied whole"):
            SafetensorsWriter(tmp_path / "x.safetensors", specs[1:], {"format": "pt"}, copy_of=source)
        writer = SafetensorsWriter(tmp_path / "y.safetensors", specs, dict(source.metadata) or {"format": "pt"}, copy_of=source)
        for spec in specs:
            writer.keep(spec.name)
        writer.close()
    assert (tmp_path / "y.safetensors").read_bytes() == (fixture_path(GPTQ) / "model.safetensors").read_bytes()


@pytest.mark.parametrize("to", BYTE_TARGETS)
def test_cli_conversion_imports_no_torch(to, tmp_path):
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


@pytest.mark.parametrize("order", [packing.AWQ_ORDER, None], ids=["awq", "sequential"])
@pytest.mark.parametrize("delta", [0, 1])
@pytest.mark.parametrize("shape", [(1, 8), (5, 64), (3, 11008)])
def test_gptq4_zeros_to_rowwise_is_unpack_then_pack_in_slot_order(delta, shape, order):
    groups, out = shape
    z = torch.randint(0, 16, (out, groups), dtype=torch.uint8, generator=torch.Generator().manual_seed(out))
    stored = packing.v1_encode_zeros(z, 4) if delta else z
    qzeros = packing.pack(stored.T.contiguous(), 4, dim=1).contiguous()
    got = packing.gptq4_zeros_to_rowwise(qzeros.numpy().view("u1").reshape(-1), groups, out, delta, order)
    want = packing.pack(z.T.contiguous(), 4, dim=1, slot_order=order)
    assert torch.equal(torch.from_numpy(got.copy()), want)
