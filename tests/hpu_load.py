"""Load INC checkpoints through INC's own Gaudi path (emulated on CPU when no Gaudi).

    python tests/hpu_load.py OUT_DIR MODE:CHECKPOINT_DIR [...]

MODE ``first``: the directory has no cache; INC repacks every layer and writes hpu_model.safetensors.
MODE ``cached``: INC must use the hpu_model.safetensors already there; repacking is made to fail, so
a load that silently repacked would be reported as an error.
MODE ``default-first`` / ``default-cached``: the same for INC's default format and its cache
quantized_hpu_weight.pt, loaded by the Gaudi recipe's call verbatim: ``load(model_name_or_path=DIR,
format="default", device="hpu", original_model=AutoModelForCausalLM.from_pretrained(BASE))``, BASE
being $WOQCONV_BASE_MODEL_DIR. Prints one JSON line per checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
from load_logits import PROMPT


def main() -> int:
    from neural_compressor.torch.algorithms.weight_only import modules
    from neural_compressor.torch.quantization import load

    from woqconv.runtime.hpu_emulation import emulated_hpu

    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(sys.argv[2:]):
        mode, path = spec.split(":", 1)
        original_unpack = modules.INCWeightOnlyLinear.unpack
        try:
            if mode.endswith("cached"):
                def refuse(self, *a, **k):
                    raise AssertionError("INC repacked a layer although a cache was present")

                modules.INCWeightOnlyLinear.unpack = refuse
            with emulated_hpu() as label:
                if mode.startswith("default-"):
                    from transformers import AutoModelForCausalLM

                    model = load(model_name_or_path=path, format="default", device="hpu",
                                 original_model=AutoModelForCausalLM.from_pretrained(os.environ["WOQCONV_BASE_MODEL_DIR"]))
                else:
                    model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)
                with torch.no_grad():
                    logits = model(torch.tensor(PROMPT)).logits.float()
            file = out_dir / f"{i}.pt"
            torch.save(logits, file)
            module = type(model.model.layers[0].self_attn.q_proj).__name__
            print(json.dumps({"path": path, "loader": mode, "module": module, "device": label, "file": str(file)}), flush=True)
        except Exception as e:
            print(json.dumps({"path": path, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}), flush=True)
        finally:
            modules.INCWeightOnlyLinear.unpack = original_unpack
    return 0


if __name__ == "__main__":
    sys.exit(main())
