"""A source written to or replaced while it is being converted: the output could hold parts of two
versions, so no output appears, the error names the file, and a rerun on the settled source converts."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest
from cli_in_process import run_cli
from conftest import BASE, fixture_path

import woqconv
from woqconv.errors import FormatError

CONVERT = importlib.import_module("woqconv.convert")  # the module: woqconv.convert is also the function
GPTQ = "ar-g128-asym-auto_gptq"  # plain 4-bit GPTQ: awq moves its bytes, inc computes on them with torch
INC_DEFAULT = "inc-default-rtn-g32-asym"  # quantized_weight.pt, read through torch


def _touch_in_place(path) -> None:
    """What a program rewriting the file in place leaves: the same inode, a new modification time."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _replace(path) -> None:
    """What a download or a save through a temporary file leaves: the same bytes under a new inode."""
    shutil.copy2(path, f"{path}.new")
    os.replace(f"{path}.new", path)


def _during_write(monkeypatch, change) -> None:
    """Run ``change()`` once the writer has started."""
    write_plan = CONVERT.write_plan

    def plan_then_change(*args, **kwargs):
        change()
        return write_plan(*args, **kwargs)

    monkeypatch.setattr(CONVERT, "write_plan", plan_then_change)


@pytest.mark.parametrize("to", ["awq", "inc"], ids=["byte-operations", "computed"])
@pytest.mark.parametrize("how", [_touch_in_place, _replace], ids=["written-in-place", "replaced"])
def test_weights_changed_during_conversion_give_no_output(to, how, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    weights = src / "model.safetensors"
    _during_write(monkeypatch, lambda: how(weights))
    out = tmp_path / "out"
    with pytest.raises(FormatError, match="changed while it was being converted") as e:
        woqconv.convert(src, out, to=to)
    assert str(weights) in e.value.one_line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no partial directory left
    monkeypatch.undo()
    woqconv.convert(src, out, to=to)  # settled: converts
    assert any(out.iterdir())


@pytest.mark.parametrize("name, how, to", [("config.json", _touch_in_place, "gptq-v2"), ("quantization_config.json", _replace, "awq")])
def test_a_config_changed_during_conversion_gives_no_output(name, how, to, tmp_path, monkeypatch):
    # quantization_config.json decides bits, group size and the zero points' convention as much as config.json.
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    _during_write(monkeypatch, lambda: how(src / name))
    with pytest.raises(FormatError, match=f"{name}: changed while it was being converted"):
        woqconv.convert(src, tmp_path / "out", to=to)
    assert not (tmp_path / "out").exists()


def test_inc_weights_changed_during_conversion_at_the_cli(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(fixture_path(INC_DEFAULT), src)
    pt = next(src.glob("*.pt"))
    _during_write(monkeypatch, lambda: _replace(pt))
    r = run_cli("convert", src, "-o", tmp_path / "out", "--to", "inc-hf", "--base-model", BASE)
    assert r.returncode == 2
    assert r.stderr == f"woqconv: error: {pt}: changed while it was being converted: the output could mix two versions, so nothing was written\n"
    assert not (tmp_path / "out").exists()


def test_weights_changed_before_the_torch_path_opens_them_give_no_output(tmp_path, monkeypatch):
    # The files' identities are taken when convert() is called, before anything reads them.
    src = tmp_path / "src"
    shutil.copytree(fixture_path(GPTQ), src)
    open_checkpoint = CONVERT.open_checkpoint

    def change_then_open(*args, **kwargs):
        _touch_in_place(src / "model.safetensors")
        return open_checkpoint(*args, **kwargs)

    monkeypatch.setattr(CONVERT, "open_checkpoint", change_then_open)
    with pytest.raises(FormatError, match="model.safetensors: changed while it was being converted"):
        woqconv.convert(src, tmp_path / "out", to="gptq-v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
