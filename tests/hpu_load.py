"""Load INC huggingface checkpoints through INC's own Gaudi path (emulated on CPU when no Gaudi).

    python tests/hpu_load.py OUT_DIR MODE:CHECKPOINT_DIR [...]

MODE ``first``: the directory has no cache; INC repacks every layer and writes hpu_model.safetensors.
MODE ``cached``: INC must use the hpu_model.safetensors already there; repacking is made to fail, so
a load that silently repacked would be reported as an error. Prints one JSON line per checkpoint.
"""

from __future__ import annotations

import json
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
            if mode == "cached":
                def refuse(self, *a, **k):
                    raise AssertionError("INC repacked a layer although a cache was present")

                modules.INCWeightOnlyLinear.unpack = refuse
            with emulated_hpu() as label:
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
