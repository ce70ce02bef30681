"""The streaming writer's chunked cast: the bytes safetensors' own save_file writes for the cast tensors."""

import torch
from safetensors.torch import save_file

from woqconv import safetensors_io
from woqconv.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec


def test_cast_from_in_row_slices_equals_save_file(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_io, "_COPY_CHUNK", 4096)  # many slices, a ragged last one
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
