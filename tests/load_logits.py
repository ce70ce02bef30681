"""Load checkpoints with their real loaders and save fp32 logits of a fixed prompt.

Run as a subprocess by the tests (a bad checkpoint can abort gptqmodel's interpreter):

    python tests/load_logits.py OUT_DIR LOADER:CHECKPOINT_DIR [...]

LOADER is ``transformers`` (quant_method dispatch: gptq/awq -> gptqmodel, auto-round -> auto-round),
``inc`` (neural_compressor.torch.quantization.load, huggingface format), ``inc-default`` (INC's
default format, with the original model built from the checkpoint's config.json, or from the base
model's in $WOQCONV_BASE_MODEL_DIR when the checkpoint records none), or ``inc-default-user-float32`` /
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
    if loader == "inc-default":
        # INC's default format needs the base architecture: the checkpoint's config.json, or the base model's.
        from neural_compressor.torch.quantization import load as inc_load
        from transformers import AutoConfig, AutoModelForCausalLM

        arch = path if os.path.exists(os.path.join(path, "config.json")) else os.environ["WOQCONV_BASE_MODEL_DIR"]
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(arch), dtype=torch.float32)
        # INC assigns the checkpoint's own unquantized tensors (bf16 when AutoRound wrote them) into the
        # fp32 base; cast the loaded model to fp32, as a CPU user would, for fp32 logits.
        return inc_load(path, format="default", original_model=base, device="cpu").float()
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
