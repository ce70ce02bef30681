"""Streaming conversion: parallel workers and the writer's chunked cast, against the real libraries' bytes."""

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file, save_file

import woqconv
from woqconv.io import safetensors_io
from woqconv.io.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec


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
    # convert() without workers uses that default for the write (and the scan and plan before it), whether
    # its layers move bytes (awq) or are computed (nf4).
    convert_module = sys.modules["woqconv.convert"]
    seen = []
    real = convert_module.write_plan
    monkeypatch.setattr(convert_module, "write_plan", lambda *a, **k: seen.append(k["workers"]) or real(*a, **k))
    woqconv.convert(fixture_path("ar-g32-sym-auto_gptq"), tmp_path / "out", to="awq")
    woqconv.convert(fixture_path("ar-g32-sym-auto_gptq"), tmp_path / "out2", to="nf4", requantize="minmax")
    assert seen == [4, 4]


def _readable_fixtures() -> list[str]:
    from conftest import MANIFEST

    names = []
    for name in sorted(MANIFEST):
        try:
            woqconv.open_checkpoint(fixture_path(name)).close()
        except woqconv.errors.WoqconvError:
            continue  # fixtures of files woqconv refuses to read (kept for the loaders' tests)
        names.append(name)
    return names


@pytest.mark.parametrize("name", _readable_fixtures())
@pytest.mark.parametrize("target", ["awq", "inc"])  # awq drops g_idx and so prepares other shells than it reads
def test_plan_reads_the_shells_the_scan_would(name, target):
    """convert opens its source with read_layers=False and takes the layer shells from the plan's own read
    (or, for layers it routes by bytes, from the numpy scan): what they say, and the warnings that depend
    on them, must be what the scan reads eagerly."""
    from woqconv.convert.plan import plan_conversion

    with woqconv.open_checkpoint(fixture_path(name), workers=2) as eager, \
            woqconv.open_checkpoint(fixture_path(name), workers=2, read_layers=False) as deferred:
        assert not deferred.has_shells
        try:
            plan_conversion(deferred, target, workers=2)
            assert deferred.has_shells  # taken from the plan's read, not read again below
        except woqconv.errors.RefusedConversion:
            pass  # refused (before or after reading the layers): .layers reads them if the plan did not
        assert [_facts(s) for s in deferred.layers] == [_facts(s) for s in eager.layers]
        assert deferred.warnings == eager.warnings
        assert deferred.layers and all(getattr(s, "is_shell", True) for s in deferred.layers)


def _facts(layer) -> tuple:
    """What a plan reads of a layer shell."""
    return tuple(getattr(layer, a, None) for a in ("name", "in_features", "out_features", "bits", "group_size", "is_symmetric",
                                                   "g_idx_kind", "quant_type", "blocksize"))
