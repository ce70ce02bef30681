"""Streaming conversion: parallel workers and the writer's chunked cast, against the real libraries' bytes."""

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file, save_file

import woqconv
from woqconv import safetensors_io
from woqconv.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec


def test_cast_from_in_row_slices_equals_save_file(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_io, "_COPY_CHUNK", 4096)  # many slices, a ragged last one
    monkeypatch.setattr(safetensors_io, "_WRITE_SLICE", 333)  # and each written in unaligned pwrite calls
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embed": torch.randn(1000, 37, generator=g).to(torch.float16),
        "scalar": torch.randn((), generator=g),
        "empty": torch.zeros(0, 5, dtype=torch.float16),
        "norm": torch.randn(3, generator=g).to(torch.float16),
    }
    save_file(tensors, tmp_path / "src.safetensors")
    with SafetensorsFile(tmp_path / "src.safetensors") as src:
        writer = SafetensorsWriter(tmp_path / "out.safetensors", [TensorSpec(n, "BF16", tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"})
        for name in tensors:
            writer.cast_from(name, src)
        writer.close()
    save_file({n: t.to(torch.bfloat16) for n, t in tensors.items()}, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


@pytest.mark.parametrize("src,target,reference", [
    ("ar-g128-asym-auto_gptq", "awq", "ar-g128-asym-auto_awq"),  # 8x8 nibble transpose in parallel workers
    ("ar-g32-sym-auto_awq", "gptq-v2", "ar-g32-sym-auto_round_gptqmodel"),  # the inverse transpose
])
def test_parallel_workers_write_autoround_own_export(src, target, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_io, "_WRITE_SLICE", 1000)  # every re-laid-out tensor in several pwrite calls
    woqconv.convert(fixture_path(src), tmp_path / "out", to=target, workers=3)
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(fixture_path(reference) / "model.safetensors")
    for name, tensor in theirs.items():
        if name.endswith((".qweight", ".qzeros", ".scales")):
            assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def test_default_workers_are_one_per_core_at_most_four(monkeypatch, tmp_path):
    import os
    import sys

    from woqconv import compute

    for cores, want in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert compute.default_workers() == want
    # convert() without workers uses that default for the write (and the scan and plan before it).
    convert_module = sys.modules["woqconv.convert"]
    seen = []
    real = convert_module.write_plan
    monkeypatch.setattr(convert_module, "write_plan", lambda *a, **k: seen.append(k["workers"]) or real(*a, **k))
    woqconv.convert(fixture_path("ar-g32-sym-auto_gptq"), tmp_path / "out", to="awq")
    assert seen == [4]
