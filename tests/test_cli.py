"""The command line: happy paths, and bad input that must give one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from cli_in_process import run_cli
from conftest import fixture_path
from rich.console import Console
from safetensors.torch import load_file, save_file

BASE = "ar-g32-asym-auto_gptq"
LAYER = "model.layers.0.self_attn.q_proj"


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def copy_fixture(tmp_path: Path, name: str = BASE) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(fixture_path(name), dst)
    return dst


def edit_tensors(ckpt: Path, fn) -> None:
    tensors = load_file(ckpt / "model.safetensors")
    fn(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def edit_config(ckpt: Path, fn) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    fn(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _set_scale(t, value):
    t[f"{LAYER}.scales"] = t[f"{LAYER}.scales"].clone()
    t[f"{LAYER}.scales"][0, 3] = value


BAD_INPUTS = {
    "unknown quant_method": (lambda c: edit_config(c, lambda d: d["quantization_config"].update(quant_method="hqq")), ["config.json", "quant_method"]),
    "missing config": (lambda c: (c / "config.json").unlink() or (c / "quantization_config.json").unlink(missing_ok=True), ["missing config.json"]),
    "not quantized": (
        lambda c: edit_config(c, lambda d: d.pop("quantization_config")) or (c / "quantization_config.json").unlink(),
        ["config.json", "no quantization_config"],
    ),
    "bits 5 vs 4-bit tensors": (lambda c: edit_config(c, lambda d: d["quantization_config"].update(bits=5)), ["model.safetensors", "qweight"]),
    "group size disagrees": (lambda c: edit_config(c, lambda d: d["quantization_config"].update(group_size=64)), ["model.safetensors", "model.layers.0.mlp.down_proj.scales", "12 groups, but in_features 384 with group_size 64"]),
    "group size 0": (lambda c: edit_config(c, lambda d: d["quantization_config"].update(group_size=0)), ["config.json", "group_size 0"]),
    "qweight without scales": (lambda c: edit_tensors(c, lambda t: t.pop(f"{LAYER}.scales")), [f"{LAYER}.scales", "no scales"]),
    "NaN scale": (lambda c: edit_tensors(c, lambda t: _set_scale(t, math.nan)), [f"{LAYER}", "NaN or infinite"]),
    "Inf scale": (lambda c: edit_tensors(c, lambda t: _set_scale(t, math.inf)), [f"{LAYER}", "NaN or infinite"]),
    "g_idx out of range": (
        lambda c: edit_tensors(c, lambda t: t.__setitem__(f"{LAYER}.g_idx", torch.full((128,), 9, dtype=torch.int32))),
        [f"{LAYER}", "g_idx values outside"],
    ),
    "AWQ layout under a GPTQ label": (
        lambda c: edit_tensors(c, lambda t: t.__setitem__(f"{LAYER}.qweight", torch.zeros(128, 16, dtype=torch.int32))),
        [f"{LAYER}.qweight", "AWQ GEMM layout"],
    ),
    "truncated safetensors": (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]), ["model.safetensors", "header length"]),
    "qzeros wrong dtype": (
        lambda c: edit_tensors(c, lambda t: t.__setitem__(f"{LAYER}.qzeros", t[f"{LAYER}.qzeros"].to(torch.int64))),
        [f"{LAYER}.qzeros", "dtype I64"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_exit_2(case, tmp_path):
    src = copy_fixture(tmp_path)
    damage, expected = BAD_INPUTS[case]
    damage(src)
    before = digest(src)
    for args in (["inspect", src], ["convert", src, "-o", tmp_path / "out", "--to", "awq"], ["convert", src, "-o", tmp_path / "out2", "--to", "gptq-v2", "--format", "json"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])
        assert r.stdout == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    assert not list(tmp_path.glob(".*woqconv*")), "no partial output may remain"
    assert digest(src) == before


def test_output_rules(tmp_path):
    src = copy_fixture(tmp_path)
    before = digest(src)
    r = run_cli("convert", src, "-o", src, "--to", "awq")
    assert r.returncode == 2 and "output is the input" in r.stderr
    r = run_cli("convert", src, "-o", src / "inside", "--to", "awq")
    assert r.returncode == 2 and "inside the input" in r.stderr
    r = run_cli("convert", src, "-o", tmp_path, "--to", "awq", "--overwrite")
    assert r.returncode == 2 and "contains the input" in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    r = run_cli("convert", src, "-o", tmp_path / "busy", "--to", "awq")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"
    # --overwrite replaces a model directory (an earlier output), never a folder of something else.
    r = run_cli("convert", src, "-o", tmp_path / "busy", "--to", "awq", "--overwrite", "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no checkpoint" in r.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"
    assert run_cli("convert", src, "-o", tmp_path / "earlier", "--to", "gptq", "-q").returncode == 0
    r = run_cli("convert", src, "-o", tmp_path / "earlier", "--to", "awq", "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "earlier" / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    # An output under a file, or an empty one, is named as such, before anything is made.
    r = run_cli("convert", src, "-o", tmp_path / "busy" / "keep.txt" / "sub", "--to", "awq")
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr and "partial" not in r.stderr
    r = run_cli("convert", src, "-o", "", "--to", "awq", "--overwrite")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--output is empty" in r.stderr
    r = run_cli("convert", src, "-o", tmp_path / "x", "--to", "nonsense")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert digest(src) == before


def test_refusal_is_one_line_and_writes_nothing(tmp_path):
    r = run_cli("convert", fixture_path("ar-zp0-g32-asym-auto_awq"), "-o", tmp_path / "out", "--to", "gptq")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "GPTQ v1 cannot store zero point 0" in r.stderr and "--to gptq-v2" in r.stderr
    assert not any(tmp_path.iterdir())
    r = run_cli("convert", fixture_path("inc-hf-gptq-actorder-g32-asym"), "-o", tmp_path / "out", "--to", "awq")
    assert r.returncode == 2 and "scattered act-order g_idx" in r.stderr
    assert not any(tmp_path.iterdir())


def test_convert_json_report_and_dry_run(tmp_path):
    r = run_cli("convert", fixture_path("ar-g128-sym-auto_gptq"), "-o", tmp_path / "dry", "--to", "awq", "--dry-run", "--format", "json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert dry["dry_run"] and not (tmp_path / "dry").exists()
    r = run_cli("convert", fixture_path("ar-g128-sym-auto_gptq"), "-o", tmp_path / "out", "--to", "awq", "--format", "json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lossless"] and rep["layers_converted"] == 14 and rep["target"] == "awq" and rep["source_format"] == "gptq"
    assert rep["bytes_out"] == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert len(rep["layer_changes"]) == 14 and all(v == ["trivial g_idx dropped"] for v in rep["layer_changes"].values())
    assert rep["files_dropped"] == ["quantization_config.json"]


def test_text_output_names_the_facts(tmp_path):
    r = run_cli("inspect", fixture_path("mislabelled-v2-as-v1-g32-sym"), "--layers")
    assert r.returncode == 0
    assert "gptq-v2" in r.stdout and "declared v1" in r.stdout and "warning" in r.stdout
    r = run_cli("convert", fixture_path("ar-g32-sym-auto_awq"), "-o", tmp_path / "o", "--to", "gptq")
    assert r.returncode == 0 and "lossless" in r.stdout and "14 quantized layers" in r.stdout


def test_leftover_partial_directory_is_cleaned_and_reported(tmp_path):
    (tmp_path / ".out.woqconv-partial").mkdir()
    (tmp_path / ".out.woqconv-partial" / "junk").write_text("x")
    r = run_cli("convert", fixture_path("ar-g32-sym-auto_awq"), "-o", tmp_path / "out", "--to", "gptq-v2", "--format", "json")
    assert r.returncode == 0
    assert any("interrupted run" in w for w in json.loads(r.stdout)["warnings"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- INC inputs (issue 3) ---------------------------------------------------------------------

class _NotATensor:
    """Any class: torch's weights_only unpickler must refuse to build it."""


def _unsafe_pickle(ckpt: Path) -> None:
    state = torch.load(ckpt / "quantized_weight.pt", weights_only=True)
    state["payload"] = _NotATensor()
    torch.save(state, ckpt / "quantized_weight.pt")


def _code_running_pickle(ckpt: Path) -> None:
    """A classic hostile pickle: unpickling it would create a marker file through os.system."""
    import io
    import pickle
    import zipfile

    marker = ckpt.parent / "PWNED"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Exploit(), protocol=2))
        z.writestr("archive/version", "3\n")
    (ckpt / "quantized_weight.pt").write_bytes(buf.getvalue())


def _hpu_cache_only(ckpt: Path) -> None:
    """An HPU cache alone, whose config claims group size 64 while the cache holds groups of 32."""
    import woqconv

    woqconv.convert(fixture_path("inc-hf-rtn-g32-asym"), ckpt.parent / "hpu", to="hpu", allow_bf16=True)
    for p in list(ckpt.iterdir()):
        p.unlink()
    shutil.copy(ckpt.parent / "hpu" / "hpu_model.safetensors", ckpt)
    cfg = json.loads((ckpt.parent / "hpu" / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    shutil.rmtree(ckpt.parent / "hpu")


INC_BAD_INPUTS = {
    "unsafe pickle": ("inc-default-rtn-g32-asym", _unsafe_pickle, ["quantized_weight.pt", "refused to unpickle"]),
    "code-running pickle": ("inc-default-rtn-g32-asym", _code_running_pickle, ["quantized_weight.pt", "refused to unpickle"]),
    "qconfig names a missing module": (
        "inc-default-rtn-g32-asym",
        lambda c: (c / "qconfig.json").write_text(
            (c / "qconfig.json").read_text().replace("model.layers.1.mlp.down_proj", "model.layers.9.mlp.down_proj")
        ),
        ["qconfig.json", "names module 'model.layers.9.mlp.down_proj'", "no model.layers.9.mlp.down_proj.qweight"],
    ),
    "HPU cache disagrees with config": ("inc-hf-rtn-g32-asym", _hpu_cache_only, ["hpu_model.safetensors", "groups, but in_features"]),
}


@pytest.mark.parametrize("case", sorted(INC_BAD_INPUTS))
def test_inc_bad_input_gives_one_line_and_exit_2(case, tmp_path):
    name, damage, expected = INC_BAD_INPUTS[case]
    src = copy_fixture(tmp_path, name)
    damage(src)
    before = digest(src)
    for args in (["inspect", src], ["convert", src, "-o", tmp_path / "out", "--to", "inc-hf"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "PWNED").exists(), "unpickling ran code"
    assert digest(src) == before


def test_changes_that_count_something_are_one_line_summed_over_layers():
    """A 7B conversion to a v1 target changes z = 0 in most layers, each by its own count: the table says
    so in one line, not one line per distinct count."""
    from woqconv.wording import change_lines

    zero = "zero points of 0 stored as all-ones fields (INC's modular v1)"
    changes = {f"model.layers.{i}.mlp.up_proj": [f"{21636 + i} {zero}", "trivial g_idx dropped"] for i in range(32)}
    changes["lm_head"] = ["4-bit codes stored in u4 constants (same integers)"]  # a number, but not a count
    changes["model.layers.0.self_attn.q_proj"] = []
    assert change_lines(changes) == [
        "1 layer: 4-bit codes stored in u4 constants (same integers)",
        "32 layers: trivial g_idx dropped",
        f"32 layers: {sum(21636 + i for i in range(32))} {zero}",
    ]


def test_the_progress_bar_is_drawn_on_a_terminal_only(tmp_path, monkeypatch):
    # Anywhere else (a pipe, a log file) rich cannot redraw it, and a transient bar would leave an empty line
    # on stderr: a successful conversion prints nothing there, and an error stays one line.
    r = run_cli("convert", fixture_path(BASE), "-o", tmp_path / "piped", "--to", "awq")
    assert r.returncode == 0 and r.stderr == "" and "lossless" in r.stdout
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    r = run_cli("convert", fixture_path(BASE), "-o", tmp_path / "terminal", "--to", "awq")
    assert r.returncode == 0 and "converting" in r.stderr, r.stderr


def test_to_choices_come_from_the_target_registry_in_any_case(tmp_path):
    from woqconv.formats import TARGETS

    r = run_cli("convert", fixture_path("ar-g32-asym-auto_gptq"), "-o", tmp_path / "out", "--to", "AWQ", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"] == "awq"
    r = run_cli("convert", fixture_path("ar-g32-asym-auto_gptq"), "-o", tmp_path / "bad", "--to", "awq4")
    assert r.returncode == 2 and all(f"'{name}'" in " ".join(r.stderr.split()) for name in TARGETS), r.stderr
    assert not (tmp_path / "bad").exists()
