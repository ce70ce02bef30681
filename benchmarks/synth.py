"""Synthesize a GPTQ v1 4-bit checkpoint with real model shapes and random codes (no model needed).

Random int32 words are valid packed codes and v1 zero points, so every byte is a plausible
checkpoint; scales are positive fp16, unquantized tensors fp16. Written tensor by tensor with
woqconv's streaming writer, so memory stays at one tensor.

    .venv/bin/python benchmarks/synth.py OUT --shape tiny|1b|7b [--shards N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from woqconv.io.safetensors_io import DTYPE_NAMES, SafetensorsWriter, TensorSpec  # noqa: E402

SHAPES = {
    # "tiny" keeps the benchmark's smoke test fast; TinyLlama-1.1B and Llama-2-7B
    "tiny": dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=4, vocab=512),
    "1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    # Llama-2-7B's layers, a quarter as many: memory at equal layer size against 7b shows what grows
    # with the model (nothing should) apart from what grows with its largest layer.
    "7b-8l": dict(hidden=4096, intermediate=11008, layers=8, heads=32, kv_heads=32, vocab=32000),
}
GROUP = 128


def tensors_of(shape: dict):
    h, i, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    kv = h // shape["heads"] * shape["kv_heads"]
    yield "model.embed_tokens.weight", "F16", (v, h)
    for n in range(shape["layers"]):
        p = f"model.layers.{n}"
        for name, (inf, outf) in {
            "self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv), "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h),
        }.items():
            yield f"{p}.{name}.qweight", "I32", (inf // 8, outf)
            yield f"{p}.{name}.qzeros", "I32", (inf // GROUP, outf // 8)
            yield f"{p}.{name}.scales", "F16", (inf // GROUP, outf)
            yield f"{p}.{name}.g_idx", "I32", (inf,)
        yield f"{p}.input_layernorm.weight", "F16", (h,)
        yield f"{p}.post_attention_layernorm.weight", "F16", (h,)
    yield "model.norm.weight", "F16", (h,)
    yield "lm_head.weight", "F16", (v, h)


def make(name: str, dtype: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    if name.endswith(".g_idx"):
        return (torch.arange(shape[0], dtype=torch.int32) // GROUP)
    if dtype == "I32":
        return torch.randint(-(2**31), 2**31 - 1, shape, generator=g, dtype=torch.int32)
    if name.endswith(".scales"):
        return (torch.rand(shape, generator=g) * 0.01 + 1e-3).to(torch.float16)
    return (torch.randn(shape, generator=g) * 0.02).to(torch.float16)


def synthesize(out: Path, shape_name: str, shards: int = 1) -> int:
    """Write the checkpoint into the new directory ``out``; return its bytes of tensor data."""
    out.mkdir(parents=True, exist_ok=False)
    shape = SHAPES[shape_name]
    specs = [TensorSpec(n, d, s) for n, d, s in tensors_of(shape)]
    # Shards split at layer boundaries, roughly equal in bytes, the way save_pretrained does.
    total = sum(s.nbytes for s in specs)
    per = total / shards
    groups, acc = [[]], 0
    for s in specs:
        if acc >= per * len(groups) and len(groups) < shards and ".layers." in s.name and s.name.endswith("q_proj.qweight"):
            groups.append([])
        groups[-1].append(s)
        acc += s.nbytes
    names = ["model.safetensors"] if len(groups) == 1 else [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for fname, group in zip(names, groups):
        w = SafetensorsWriter(out / fname, group, {"format": "pt"})
        for s in group:
            t = make(s.name, s.dtype, s.shape, g)
            assert DTYPE_NAMES[t.dtype] == s.dtype
            w.write(s.name, t)
            weight_map[s.name] = fname
        w.close()
    if len(groups) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    h = shape["hidden"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"], "num_attention_heads": shape["heads"], "num_key_value_heads": shape["kv_heads"],
        "vocab_size": shape["vocab"], "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": False,
                                "damp_percent": 0.01, "checkpoint_format": "gptq"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    total = synthesize(Path(args.out), args.shape, args.shards)
    print(f"{args.out}: {args.shape}, {total / 2**30:.2f} GiB in {args.shards} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
