"""The head start (convert/head_start.py): source shards copied whole before the plan must leave exactly
the bytes a conversion without it writes, and nothing at all when the conversion is refused."""

import shutil

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file, save_file

import woqconv
from woqconv.convert import head_start
from woqconv.errors import FormatError, OutputError, RefusedConversion
from woqconv.safetensors_io import SafetensorsFile, SafetensorsWriter


@pytest.fixture
def prefills(monkeypatch) -> list[bool]:
    """Whether each SafetensorsWriter kept a head start's copy (True) or wrote its file from scratch."""
    seen: list[bool] = []
    init = SafetensorsWriter.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.prefilled_from is not None)

    monkeypatch.setattr(SafetensorsWriter, "__init__", spy)
    return seen


def _files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("name,target,kept", [
    ("ar-g128-asym-auto_gptq", "inc-hf", [True]),  # every byte of the copy is the output's
    ("ar-g128-asym-auto_gptq", "gptq-v2", [True]),  # qzeros rewritten (+1) over the copy
    ("ar-w3-g32-asym-auto_round_gptqmodel", "gptq", [True]),  # v2 -> v1 at 3 bits
    ("ar-g32-sym-auto_gptq", "hpu", [False, False]),  # no head start beside a companion file (its repack would wait)
    ("inc-hf-rtn-g32-asym", "gptq-v2", [False]),  # the source has no g_idx, the output has: headers differ, rewritten
])
def test_output_is_the_one_written_without_a_head_start(name, target, kept, tmp_path, monkeypatch, prefills):
    woqconv.convert(fixture_path(name), tmp_path / "with", to=target, allow_bf16=True, workers=2)
    assert prefills == kept
    monkeypatch.setattr(head_start, "start", lambda *a, **k: None)
    woqconv.convert(fixture_path(name), tmp_path / "without", to=target, allow_bf16=True, workers=2)
    assert _files(tmp_path / "with") == _files(tmp_path / "without")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with", "without"]  # no partial directory left


def test_gptq_v2_output_holds_the_v2_zero_points_not_the_copied_v1_ones(tmp_path, prefills):
    """Against the real library: AutoRound's own GPTQModel (v2) export of the same quantization."""
    woqconv.convert(fixture_path("ar-g32-asym-auto_gptq"), tmp_path / "out", to="gptq-v2", workers=2)
    assert prefills == [True]
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path("ar-g32-asym-auto_round_gptqmodel") / "model.safetensors")
    qzeros = [n for n in theirs if n.endswith(".qzeros")]
    assert qzeros and all(torch.equal(ours[n], theirs[n]) for n in qzeros)


def test_refused_conversion_leaves_nothing(tmp_path, prefills):
    # GPTQ v1 cannot store z = 0: refused after the copy has started
    assert head_start.copyable_shards(fixture_path("ar-zp0-g32-asym-auto_round_gptqmodel"), "gptq")
    with pytest.raises(RefusedConversion, match="z = 0"):
        woqconv.convert(fixture_path("ar-zp0-g32-asym-auto_round_gptqmodel"), tmp_path / "out", to="gptq", workers=2)
    assert list(tmp_path.iterdir()) == [] and prefills == []


def test_bad_layer_found_after_the_copy_started_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_path("ar-g32-asym-auto_gptq"), src)
    tensors = load_file(src / "model.safetensors")
    name = next(n for n in sorted(tensors) if n.endswith(".scales"))
    tensors[name][0, 0] = float("nan")
    with SafetensorsFile(src / "model.safetensors") as f:
        metadata = dict(f.metadata)
    save_file(tensors, src / "model.safetensors", metadata=metadata)  # canonical: still worth a head start
    assert head_start.copyable_shards(src, "inc-hf")
    with pytest.raises(FormatError, match="NaN"):
        woqconv.convert(src, tmp_path / "out", to="inc-hf", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_refused_output_is_refused_as_before_and_untouched(tmp_path, prefills):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        woqconv.convert(fixture_path("ar-g128-asym-auto_gptq"), out, to="inc-hf", workers=2)
    assert _files(out) == {"keep.txt": b"mine"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    woqconv.convert(fixture_path("ar-g128-asym-auto_gptq"), out, to="inc-hf", workers=2, overwrite=True)
    assert "keep.txt" not in _files(out) and prefills == [True]


def test_only_targets_that_keep_the_source_layout_get_a_head_start(tmp_path):
    gptq = fixture_path("ar-g128-asym-auto_gptq")
    assert head_start.copyable_shards(gptq, "inc-hf") == ["model.safetensors"]
    assert head_start.copyable_shards(gptq, "awq") == []  # re-laid out
    assert head_start.copyable_shards(gptq, "hpu") == []  # a companion file, repacked on the CPU
    assert head_start.copyable_shards(gptq, "inc") == []  # a torch.save file
    assert head_start.copyable_shards(gptq, "no-such-target") == []
    assert head_start.copyable_shards(tmp_path / "missing", "inc-hf") == []  # the scan reports it


def test_a_header_not_in_save_file_layout_gets_no_head_start(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_path("ar-g128-asym-auto_gptq"), src)
    save_file(load_file(src / "model.safetensors"), src / "model.safetensors")  # no __metadata__
    with SafetensorsFile(src / "model.safetensors") as f:
        assert not head_start.in_canonical_layout(f)
    assert head_start.copyable_shards(src, "inc-hf") == []


def test_a_failed_copy_falls_back_to_writing_everything(tmp_path, monkeypatch, prefills):
    """ENOSPC (or anything else) in the head start's copy is not an error of its own: the writer writes the
    shard in full, and reports its own errors."""
    import errno
    import os

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    src = fixture_path("ar-g128-asym-auto_gptq")
    woqconv.convert(src, tmp_path / "reference", to="gptq-v2", workers=2)
    monkeypatch.setattr(head_start, "_copy_whole", full)
    woqconv.convert(src, tmp_path / "out", to="gptq-v2", workers=2)
    assert prefills == [True, False]
    assert _files(tmp_path / "out") == _files(tmp_path / "reference")
