"""INC's use_optimum_format=False layout (FORMATS.md 3.1): read into the IR, checked against the optimum
fixtures of the same quantization run and against INC's own unpack()."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import MANIFEST, base_for, fixture_path

import woqconv
from woqconv.errors import FormatError
from woqconv.formats.inc_nonoptimum import signed_to_unsigned, unpack_words

INC = pytest.importorskip("neural_compressor.torch.algorithms.weight_only.modules")

NONOPT = sorted(n for n, e in MANIFEST.items() if e.get("family") == "inc-nonoptimum")
TORCH_DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}
TARGETS = ("gptq", "gptq-v2", "awq", "inc", "inc-hf")
READ_BACK_AS = {"gptq": "gptq", "gptq-v2": "gptq-v2", "awq": "awq", "inc": "inc", "inc-hf": "gptq"}


def test_the_three_fixtures_are_covered():
    assert NONOPT == ["inc-nonopt-dim0-int8-g32-asym", "inc-nonopt-dim1-int32-g32-asym", "inc-nonopt-dim1-int64-g32-sym"]
    for name in NONOPT:
        assert MANIFEST[name]["run_exact_ints"] and MANIFEST[name]["run_scales_equal_as_fp16"]


def _layers(path) -> dict:
    with woqconv.open_checkpoint(path) as ckpt:
        return {layer.name: layer for layer in ckpt.iter_layers()}


@pytest.fixture(scope="module", params=NONOPT)
def pair(request):
    name = request.param
    return name, _layers(fixture_path(name)), _layers(fixture_path(MANIFEST[name]["run_reference"]))


def test_reads_the_same_integers_as_the_optimum_fixture(pair):
    name, got, ref = pair
    assert sorted(got) == sorted(ref) and len(got) == 14
    for lname, a in got.items():
        b = ref[lname]
        assert (a.in_features, a.out_features, a.bits, a.group_size) == (b.in_features, b.out_features, 4, 32), lname
        assert a.codes.dtype == torch.uint8 and torch.equal(a.codes, b.codes), lname
        assert a.zeros.dtype == torch.uint8 and torch.equal(a.zeros, b.zeros), lname
        assert a.g_idx is None and torch.equal(a.group_of_channel(), b.group_of_channel()), lname
        # Scales stay as stored (fp32); rounded to fp16 they are the optimum fixture's.
        assert a.scales.dtype == torch.float32 and b.scales.dtype == torch.float16, lname
        assert torch.equal(a.scales.to(torch.float16), b.scales), lname
        assert a.bias is None  # INC's optimum format adds a zero bias; the non-optimum one does not
    if MANIFEST[name]["sym"]:
        assert all(bool((a.zeros == 8).all()) for a in got.values())


@pytest.mark.parametrize("name", NONOPT)
def test_inspect_reports_inc_nonopt(name):
    entry = MANIFEST[name]
    r = woqconv.inspect(fixture_path(name))
    assert r.format == "inc-nonopt"
    assert (r.bits, r.group_size, r.sym, r.sym_declared) == (4, 32, entry["sym"], entry["sym"])
    assert r.zero_point_convention == "v2"  # raw zero points (sym: implicit 2^(b-1), none stored)
    assert r.scales_dtypes == ["float32"] and r.g_idx == "none" and r.quantized_modules == 14
    assert {(layer.in_features, layer.out_features) for layer in r.layers} == {(128, 128), (128, 64), (128, 384), (384, 128)}
    assert r.warnings == []
    with woqconv.open_checkpoint(fixture_path(name)) as ckpt:
        layouts = ckpt.format.declared_config["inc_nonoptimum_layouts"]
        want = {"compression_dim": entry["compression_dim"], "compression_dtype": entry["compression_dtype"]}
        assert len(layouts) == 14 and all(v == want for v in layouts.values())


@pytest.mark.parametrize("name", NONOPT)
def test_inc_own_unpack_and_recover_agree(name):
    """INC's INCWeightOnlyLinear, given the stored tensors and the layout the manifest records, is the reference."""
    entry = MANIFEST[name]
    state = torch.load(fixture_path(name) / "quantized_weight.pt", weights_only=True)
    got = _layers(fixture_path(name))
    assert got
    for lname, layer in got.items():
        keys = ("qweight", "scales", "scale_bf16_to_fp8") + (() if entry["sym"] else ("qzeros",))
        module = INC.INCWeightOnlyLinear(
            layer.in_features, layer.out_features, bits=4, group_size=32, zp=not entry["sym"], bias=False,
            scale_dtype=torch.float32, compression_dtype=TORCH_DTYPES[entry["compression_dtype"]],
            compression_dim=entry["compression_dim"], use_optimum_format=False,
        )
        module.load_state_dict({k: state[f"{lname}.{k}"] for k in keys}, strict=True)
        unpacked = module.unpack()
        q = unpacked["int_weight"].to(torch.int16)
        if entry["sym"]:
            assert unpacked["zp"] is None
            assert int(q.min()) < 0  # INC's own reading is signed
            assert torch.equal(q + 8, layer.codes.to(torch.int16)), lname
        else:
            assert torch.equal(q, layer.codes.to(torch.int16)), lname
            assert torch.equal(unpacked["zp"].to(torch.int16), layer.zeros.to(torch.int16)), lname
        assert torch.equal(unpacked["scales"], layer.scales), lname
        assert torch.equal(module.recover(), layer.dequantize()), lname


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", NONOPT)
def test_convert_matches_converting_the_optimum_fixture(name, target, tmp_path):
    src = fixture_path(name)
    ref = fixture_path(MANIFEST[name]["run_reference"])
    report = woqconv.convert(src, tmp_path / "out", to=target, base_model=base_for(src))
    assert report.lossless and report.layers_converted == 14 and report.source_format == "inc-nonopt"
    woqconv.convert(ref, tmp_path / "ref", to=target, base_model=base_for(ref))
    src_layers = _layers(src)
    with woqconv.open_checkpoint(tmp_path / "out") as ckpt:
        assert ckpt.format.name == READ_BACK_AS[target]
    out, ref_out = _layers(tmp_path / "out"), _layers(tmp_path / "ref")
    assert sorted(out) == sorted(ref_out) == sorted(src_layers)
    for lname, a in out.items():
        b, s = ref_out[lname], src_layers[lname]
        assert torch.equal(a.codes, b.codes) and torch.equal(a.zeros, b.zeros), lname
        assert torch.equal(a.group_of_channel(), b.group_of_channel()), lname
        assert a.scales.dtype == torch.float32 and torch.equal(a.scales, s.scales), lname  # fp32 carried as is
        assert torch.equal(a.scales.to(b.scales.dtype), b.scales), lname
        assert torch.equal(a.dequantize(), s.dequantize()), lname


def test_not_a_target():
    assert "inc-nonopt" not in woqconv.TARGETS
    with pytest.raises(ValueError, match="unknown target"):
        woqconv.convert(fixture_path(NONOPT[0]), "/nonexistent-never-written", to="inc-nonopt")


# -- the unpacking helper and detection, on layers INC packs itself ----------------------------------


def _inc_pack(in_f, out_f, bits, gs, sym, dim, dtype, g_idx=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = -(-in_f // gs)
    if sym:
        q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (out_f, in_f), generator=gen, dtype=torch.int32)
        zp = None
    else:
        q = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen, dtype=torch.int32)
        zp = torch.randint(0, 1 << bits, (out_f, groups), generator=gen, dtype=torch.int32).to(torch.uint8)
    scales = torch.rand(out_f, groups, generator=gen) + 0.01
    gi = (torch.randperm(in_f, generator=gen) % groups).to(torch.int32) if g_idx else None
    m = INC.INCWeightOnlyLinear(
        in_f, out_f, bits=bits, group_size=gs, zp=not sym, bias=False, scale_dtype=torch.float32,
        compression_dtype=dtype, compression_dim=dim, g_idx=g_idx, use_optimum_format=False,
    )
    m.pack(q.clone(), scales, None if zp is None else zp.clone(), None, g_idx=gi)
    return m, q, zp, scales, gi


def _write_inc_default(path, modules: dict, bits, gs, sym):
    """A minimal INC default-format checkpoint: qconfig.json + quantized_weight.pt."""
    path.mkdir()
    state, qconfig = {}, {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            state[f"{name}.{k}"] = v
        qconfig[str((name, "Linear"))] = {"rtn": {"dtype": "int", "bits": bits, "use_sym": sym, "group_size": gs}}
    torch.save(state, path / "quantized_weight.pt")
    (path / "qconfig.json").write_text(json.dumps(qconfig))


CASES = [
    # (bits, compression dtype, dim, sym, in, out, gs, g_idx)
    (4, torch.int8, 0, False, 96, 40, 32, False),
    (4, torch.int16, 1, False, 128, 24, 32, False),
    (4, torch.int16, 0, True, 64, 30, 16, False),
    (4, torch.int64, 1, True, 256, 16, 128, False),
    (4, torch.int64, 0, False, 100, 17, 32, False),  # out not a multiple of 16 fields: padded words
    (4, torch.int32, 1, False, 100, 16, 32, True),  # in not a multiple of 8: g_idx pins in_features
    (2, torch.int32, 1, False, 64, 8, 32, False),
    (2, torch.int8, 0, True, 64, 8, 32, False),
    (3, torch.int32, 1, False, 120, 8, 40, False),  # 10 fields per word, 2 bits unused
    (8, torch.int8, 1, True, 64, 8, 32, False),  # one field per word: both dims store the same array
    (8, torch.int16, 0, False, 64, 9, 32, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-{str(c[1])[6:]}-dim{c[2]}-{'sym' if c[3] else 'asym'}-{c[4]}x{c[5]}")
def test_reads_what_inc_packs(case, tmp_path):
    bits, dtype, dim, sym, in_f, out_f, gs, g_idx = case
    m, q, zp, scales, gi = _inc_pack(in_f, out_f, bits, gs, sym, dim, dtype, g_idx)
    _write_inc_default(tmp_path / "ckpt", {"layer": m}, bits, gs, sym)
    with woqconv.open_checkpoint(tmp_path / "ckpt") as ckpt:
        assert ckpt.format.name == "inc-nonopt" and ckpt.format.zero_point_convention == "v2"
        (layer,) = list(ckpt.iter_layers())
    assert (layer.in_features, layer.out_features) == (in_f, out_f)
    half = 1 << (bits - 1)
    want_codes = (q + half) if sym else q
    assert torch.equal(layer.codes.to(torch.int32), want_codes)
    assert torch.equal(layer.zeros, torch.full_like(layer.zeros, half) if sym else zp)
    assert torch.equal(layer.scales, scales)
    if g_idx:
        assert torch.equal(layer.g_idx, gi)
    unpacked = m.unpack()
    assert torch.equal(unpacked["int_weight"].to(torch.int32) + (half if sym else 0), layer.codes.to(torch.int32))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_unpack_words_reads_bit_patterns_of_any_width(dtype):
    width = torch.iinfo(dtype).bits
    fields = torch.randint(0, 16, (5, 3 * (width // 4)), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    words = torch.zeros(5, 3, dtype=torch.int64)
    for k in range(width // 4):
        words |= fields[:, k::width // 4] << (4 * k)
    # the int64 holds the unsigned pattern; reinterpret it in the word width (top field sets the sign bit)
    words = torch.where(words >= 1 << (width - 1), words - (1 << width), words).to(dtype) if width < 64 else words
    order = torch.arange(3 * (width // 4)).view(3, width // 4).reshape(-1)
    assert torch.equal(unpack_words(words, 4, dim=1, count=fields.shape[1]).to(torch.int64), fields[:, order])
    assert torch.equal(unpack_words(words.T.contiguous(), 4, dim=0, count=fields.shape[1] - 1).T.to(torch.int64), fields[:, :-1])
    with pytest.raises(ValueError):
        unpack_words(words, 4, dim=1, count=fields.shape[1] - width // 4)
    assert torch.equal(signed_to_unsigned(torch.tensor([0, 7, 8, 15], dtype=torch.uint8), 4), torch.tensor([8, 15, 0, 7], dtype=torch.uint8))


# -- detection: layouts that do not fit ------------------------------------------------------------


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(fixture_path(name), dst)
    return dst


def test_mixed_layouts_are_refused(tmp_path):
    """One layer in the non-optimum layout inside an optimum checkpoint: FormatError naming both."""
    dst = _copy(tmp_path, "inc-default-rtn-g32-asym")
    state = torch.load(dst / "quantized_weight.pt", weights_only=True)
    nonopt = torch.load(fixture_path("inc-nonopt-dim0-int8-g32-asym") / "quantized_weight.pt", weights_only=True)
    layer = "model.layers.1.mlp.up_proj"
    del state[f"{layer}.bias"]
    for k in ("qweight", "qzeros", "scales"):
        state[f"{layer}.{k}"] = nonopt[f"{layer}.{k}"]
    torch.save(state, dst / "quantized_weight.pt")
    with pytest.raises(FormatError, match=r"mix INC's optimum layout \(13 layers.*use_optimum_format=False layout \(1 layer, e.g. model.layers.1.mlp.up_proj: qweight I8 \[192, 128\]"):
        woqconv.inspect(dst)


def test_optimum_fixture_is_still_read_as_inc():
    r = woqconv.inspect(fixture_path("inc-default-rtn-g32-asym"))
    assert r.format == "inc" and r.zero_point_convention == "v1"


DIM0, SYM64 = "inc-nonopt-dim0-int8-g32-asym", "inc-nonopt-dim1-int64-g32-sym"
Q = "model.layers.0.self_attn.q_proj"


def _set(key, fn):
    return lambda s: s.__setitem__(f"{Q}.{key}", fn(s))


@pytest.mark.parametrize(
    "name, damage, match",
    [
        (DIM0, _set("qzeros", lambda s: s[f"{Q}.qzeros"][:, :3].contiguous()), rf"tensor {Q}.qzeros: shape \[64, 3\], expected \[64, 4\] for compression_dim 0"),
        (DIM0, _set("qzeros", lambda s: s[f"{Q}.qzeros"].to(torch.int32)), rf"tensor {Q}.qzeros: dtype I32, but qweight is I8"),
        (DIM0, _set("scales", lambda s: s[f"{Q}.scales"][:, :3].contiguous()), rf"tensor {Q}.scales: 3 groups, but in_features 128 with group_size 32 gives 4"),
        (DIM0, _set("qweight", lambda s: s[f"{Q}.qweight"][:60].contiguous()), rf"tensor {Q}.qweight: shape \[60, 128\]: compression_dim 1 needs \[out=128"),
        (SYM64, _set("scales", lambda s: s[f"{Q}.scales"][:, :3].contiguous()), rf"tensor {Q}.scales: 3 groups of 32 do not fit in_features 113..128"),
        (SYM64, _set("qweight", lambda s: s[f"{Q}.qweight"][:, :5].contiguous()), rf"tensor {Q}.scales: 4 groups of 32 do not fit in_features 65..80"),
        (SYM64, _set("g_idx", lambda s: torch.zeros(96, dtype=torch.int32)), rf"tensor {Q}.g_idx: shape \[96\], but {Q}.qweight's 8 words of 16 fields and 4 groups of 32 allow in_features 113..128"),
        (SYM64, _set("scales", lambda s: s[f"{Q}.scales"].T.contiguous()), rf"tensor {Q}.qweight: shape \[128, 8\]: compression_dim 1 needs \[out=4, ceil\(in/16\)\] for scales \[4, 128\]"),
    ],
    ids=["qzeros-shape", "qzeros-dtype", "scales-groups", "qweight-rows", "scales-groups-dim1", "qweight-width", "g_idx-length", "scales-transposed"],
)
def test_damaged_layer_names_tensor_and_problem(name, damage, match, tmp_path):
    dst = _copy(tmp_path, name)
    state = torch.load(dst / "quantized_weight.pt", weights_only=True)
    damage(state)
    torch.save(state, dst / "quantized_weight.pt")
    with pytest.raises(FormatError, match=match):
        with woqconv.open_checkpoint(dst) as ckpt:
            list(ckpt.iter_layers())
