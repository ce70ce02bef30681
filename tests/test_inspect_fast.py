"""inspect without torch: for GPTQ and AWQ GEMM checkpoints in safetensors, the source's numpy scan describes
every layer, and its report is exactly the one the torch reader's shells give (a conversion's plan mixes
the two, so they must agree); for everything else, and for anything wrong, it steps aside and the torch
reader answers (and errs) as before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, MANIFEST, fixture_path
from corpus import AWQ, CASES, GPTQ, LAYER, build, edit_tensors, random_small_tensors

import woqconv
from woqconv import inspection
from woqconv.kernels import packing
from woqconv.formats import scan as numpy_scan
from woqconv.compute import compute_threads
from woqconv.errors import WoqconvError
from woqconv.formats.base import ZP_V1, ZP_V1_WORD, ZP_V2, SourceFormat
from woqconv.io.safetensors_io import ITEMSIZE, TORCH_NAMES
from woqconv.formats.zero_points import symmetric_field
from woqconv.source import open_checkpoint

ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def takes_fast_path(name: str) -> bool:
    """What the numpy scan covers, said from the manifest: the GPTQ and AWQ GEMM layouts in safetensors with
    2, 4 or 8 bits (3-bit fields straddle bytes). INC's default format is the GPTQ layout too, but only its
    sharded save is safetensors; the others are a torch pickle."""
    entry = MANIFEST.get(name, {})
    if entry.get("family") in ("gptq-v1", "gptq-v2", "awq-gemm"):
        return entry["bits"] != 3
    return entry.get("family") == "inc-default" and entry.get("export") == "default-blockwise"


FAST = [n for n in ALL_FIXTURES if takes_fast_path(n)]


def scanned_report(path, convention: str = "auto"):
    """The report from the numpy scan alone; None when some layer needed the torch reader."""
    with open_checkpoint(path, zero_point_convention=convention, read_layers=False) as src:
        if not src.layer_names or len(src.scans) != len(src.layer_names):
            return None
        report = inspection.report_for(src)
        report.engines = inspection.engine_rows(report)  # verdicts; the fixes, planned, are inspect's
        return report


def torch_report(path, convention: str = "auto") -> dict:
    """The report from the torch reader's shells, every layer read."""
    with compute_threads(1), open_checkpoint(path, zero_point_convention=convention, read_layers=False) as src:
        src.adopt_shells([src.read_layer(name, codes=False).shell() for name in src.layer_names])
        report = inspection.report_for(src)
        report.engines = inspection.engine_rows(report)  # verdicts; the fixes, planned, are inspect's
        return report.to_dict()


def test_the_fast_path_covers_what_it_should():
    assert len(FAST) == 35, FAST  # 27 auto-round exports, 6 INC huggingface, INC's sharded default, the mislabelled copy
    assert any(MANIFEST[n]["family"] == "awq-gemm" for n in FAST) and any(MANIFEST[n].get("layer_config") for n in FAST)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fast_report_equals_the_torch_report(name):
    try:
        fast = scanned_report(fixture_path(name))
    except WoqconvError:
        fast = None  # files woqconv refuses to read (kept for the loaders' tests)
    if not takes_fast_path(name):
        assert fast is None, f"{name}: the numpy scan claims a layout it does not read"
        return
    assert fast is not None, f"{name}: fell back to the torch scan"
    assert fast.to_dict() == torch_report(fixture_path(name))
    # inspect also plans the engines' fixes on the checkpoint: the rest is the scan's report.
    full = woqconv.inspect(fixture_path(name)).to_dict()
    for row in full["engines"]:
        row["fix"] = None
    assert full == fast.to_dict()


@pytest.mark.parametrize("convention", [ZP_V1, ZP_V2, ZP_V1_WORD])
@pytest.mark.parametrize("name", FAST)
def test_fast_report_equals_the_torch_report_when_a_convention_is_forced(name, convention):
    fast = scanned_report(fixture_path(name), convention)
    assert fast is not None and fast.to_dict() == torch_report(fixture_path(name), convention)


# -- the rules the numpy scan uses, checked against the torch code they stand for ----------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("convention", [ZP_V1, ZP_V2, ZP_V1_WORD])
def test_symmetric_field_is_what_the_torch_reader_decodes_to_half(bits, convention):
    fmt = SourceFormat("x", "gptq", bits, 128, None, convention, "gptq", "test")
    per_word = 32 // bits
    word = sum(symmetric_field(fmt, bits) << (k * bits) for k in range(per_word))
    words = torch.tensor([[word - (1 << 32) if word >= 1 << 31 else word] * 2], dtype=torch.int32)
    if convention == ZP_V1_WORD:
        zeros = packing.unpack(packing.v1_word_decode(words, bits), bits, dim=1)
    else:
        stored = packing.unpack(words, bits, dim=1)
        zeros = stored if convention == ZP_V2 else packing.v1_decode_zeros(stored, bits)
    assert zeros.tolist() == [[1 << (bits - 1)] * (2 * per_word)]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zero_field_counts_equal_torch_bincount_of_unpacked_fields(bits):
    words = torch.randint(-(2**31), 2**31 - 1, (64, 16), dtype=torch.int32, generator=torch.Generator().manual_seed(bits))
    want = torch.bincount(packing.unpack(words, bits, dim=1).reshape(-1), minlength=1 << bits).tolist()
    assert numpy_scan.zero_field_counts(words.numpy().view("uint8").reshape(-1), bits) == want


def test_dtype_tables_by_name_match_torch():
    for name, torch_name in TORCH_NAMES.items():
        assert torch.empty(0, dtype=getattr(torch, torch_name)).element_size() == ITEMSIZE[name], name


# -- the command line, in a fresh process ---------------------------------------------------------------

# Runs ``woqconv ARGS`` and says on stderr's last line whether torch was imported.
WRAPPER = """
import runpy, sys
sys.argv = ["woqconv", *sys.argv[1:]]
try:
    runpy.run_module("woqconv", run_name="__main__")
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
"""


def run_wrapped(*args: str) -> tuple[subprocess.CompletedProcess, bool]:
    r = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, timeout=300, check=False)
    last = r.stderr.strip().splitlines()[-1]
    assert last in ("torch imported", "torch not imported"), r.stderr
    return r, last == "torch imported"


@pytest.mark.parametrize("name", ["ar-g128-asym-auto_gptq", "ar-g32-sym-auto_awq", "inc-hf-gptq-actorder-g32-asym", "ar-mixed-g32-asym-auto_gptq"])
def test_cli_inspect_json_imports_no_torch_and_equals_the_torch_report(name):
    # The scan describes the checkpoint without torch; the engines table then plans its fixes with the
    # converter, which reads layers with torch where no byte route takes them (OpenVINO's, always).
    r, imported = run_wrapped("inspect", str(fixture_path(name)), "--format", "json", "--no-fixes")
    assert r.returncode == 0, r.stderr
    assert not imported
    got = json.loads(r.stdout)
    assert all(row["fix"] is None for row in got.pop("engines"))
    want = json.loads(json.dumps(torch_report(fixture_path(name))))
    assert all(row["fix"] is None for row in want.pop("engines"))
    assert got == want


def test_cli_inspect_of_another_layout_still_uses_torch():
    """The wrapper sees torch when it is imported: the test above is not vacuous."""
    r, imported = run_wrapped("inspect", str(fixture_path("bnb-nf4-fp16")), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert imported and json.loads(r.stdout)["format"] == "bnb-nf4"


def test_cli_help_imports_no_torch():
    r, imported = run_wrapped("--help")
    assert r.returncode == 0 and "inspect" in r.stdout
    assert not imported


# -- bad inputs: the numpy scan steps aside, the torch scan reports as before --------------------------


def _bf16_nan_scale(t: dict) -> None:
    t[f"{LAYER}.scales"] = t[f"{LAYER}.scales"].to(torch.bfloat16)
    t[f"{LAYER}.scales"][3, 7] = float("nan")


def _g_idx_int64_beyond_int32(t: dict) -> None:
    t[f"{LAYER}.g_idx"] = t[f"{LAYER}.g_idx"].to(torch.int64) + (1 << 32)  # int32 of it is the same trivial g_idx


EXTRA = {
    "bf16 NaN scale": _bf16_nan_scale,
    "g_idx int64 beyond int32": _g_idx_int64_beyond_int32,
    "bias U16": lambda t: t.__setitem__(f"{LAYER}.bias", torch.zeros(128, dtype=torch.uint16)),
}


def _outcome(fn) -> tuple[str, str]:
    try:
        return "ok", json.dumps(fn().to_dict(), sort_keys=True)
    except WoqconvError as e:
        return type(e).__name__, e.one_line()


def _torch_outcome(path) -> tuple[str, str]:
    try:
        return "ok", json.dumps(torch_report(path), sort_keys=True)
    except WoqconvError as e:
        return type(e).__name__, e.one_line()


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.fixture in (GPTQ, AWQ)))
def test_bad_input_gives_the_torch_scans_error(name, tmp_path):
    src, _, named = build(CASES[name], tmp_path)
    kind, line = _outcome(lambda: woqconv.inspect(src, fixes=False))
    assert (kind, line) == _torch_outcome(src)
    assert kind != "ok" and str(named) in line and CASES[name].problem in line.lower()


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_unusual_data_goes_to_the_torch_scan(name, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    edit_tensors(EXTRA[name])(src)
    assert scanned_report(src) is None
    assert _outcome(lambda: woqconv.inspect(src, fixes=False)) == _torch_outcome(src)


@pytest.mark.parametrize("seed", range(20))
def test_random_small_tensors_give_the_torch_scans_answer(seed, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    edit_tensors(random_small_tensors(seed))(src)
    fast = scanned_report(src)
    want = _torch_outcome(src)
    assert (fast is not None) == (want[0] == "ok"), want
    assert _outcome(lambda: woqconv.inspect(src, fixes=False)) == want
