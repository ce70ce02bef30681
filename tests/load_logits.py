"""Load checkpoints with their real loaders and save fp32 logits of a fixed prompt.

Run as a subprocess by the tests (a bad checkpoint can abort gptqmodel's interpreter):

    python tests/load_logits.py OUT_DIR LOADER:CHECKPOINT_DIR [...]

LOADER is ``transformers`` (quant_method dispatch: gptq/awq -> gptqmodel, auto-round -> auto-round),
``inc`` (neural_compressor.torch.quantization.load, huggingface format), ``inc-default`` (INC's
default format, with the original model from_pretrained($WOQCONV_BASE_MODEL_DIR) in fp32; ``-sharded``
for INC's blockwise save), or ``inc-default-user-float32`` /
``inc-default-user-bfloat16``: INC's documented call with the original model as a user builds it,
``AutoModelForCausalLM.from_pretrained(BASE, dtype=D)`` (BASE = $WOQCONV_BASE_MODEL_DIR). Prints one JSON
line per checkpoint: {"path", "loader", "module", "file"} or {"path", "error"}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch

PROMPT = [[1, 5, 9, 33, 100, 200, 7, 8, 9, 10, 11, 12, 250, 3, 64, 128]]


def load(loader: str, path: str):
    if loader == "transformers":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
    if loader == "inc":
        from neural_compressor.torch.quantization import load as inc_load

        return inc_load(path, format="huggingface", device="cpu", torch_dtype=torch.float32)
    if loader.startswith("inc-default-user-"):
        from neural_compressor.torch.quantization import load as inc_load
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, loader.rsplit("-", 1)[1])
        original = AutoModelForCausalLM.from_pretrained(os.environ["WOQCONV_BASE_MODEL_DIR"], dtype=dtype)
        return inc_load(path, format="default", original_model=original)
    if loader in ("inc-default", "inc-default-sharded"):
        # INC's documented call: the original model built from its own weights (every fixture's is
        # $WOQCONV_BASE_MODEL_DIR). INC takes embeddings and norms from it unless the entries say awq/teq.
        # The blockwise save (safetensors shards + model_bin_index.json) loads with sharded_checkpoints.
        from neural_compressor.torch.quantization import load as inc_load
        from transformers import AutoModelForCausalLM

        original = AutoModelForCausalLM.from_pretrained(os.environ["WOQCONV_BASE_MODEL_DIR"], dtype=torch.float32)
        sharded = {"sharded_checkpoints": True} if loader == "inc-default-sharded" else {}
        return inc_load(path, format="default", original_model=original, device="cpu", **sharded).float()
    if loader == "gptqmodel":
        # GPTQModel's own loader honours per-module `dynamic` (mixed precision); its torch kernel builds in
        # fp16 and the model is then cast to fp32 like the others.
        from gptqmodel import BACKEND, GPTQModel

        return GPTQModel.load(path, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16).model.float()
    raise ValueError(f"unknown loader {loader}")


def main() -> int:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(sys.argv[2:]):
        loader, path = spec.split(":", 1)
        try:
            model = load(loader, path)
            with torch.no_grad():
                logits = model(torch.tensor(PROMPT)).logits.float()
            module = type(model.model.layers[0].self_attn.q_proj).__name__
            file = out_dir / f"{i}.pt"
            torch.save(logits, file)
            print(json.dumps({"path": path, "loader": loader, "module": module, "file": str(file)}), flush=True)
        except Exception as e:  # reported to the test, which decides
            print(json.dumps({"path": path, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
