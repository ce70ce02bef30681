"""INC's own route to a Gaudi-ready checkpoint, timed by benchmarks/run.py as a child process.

``load(CKPT, format="huggingface", device="hpu")`` under woqconv's CPU emulation of the HPU stack:
INC reads the GPTQ checkpoint, unpacks and repacks every layer into its HPU layout, and writes
``hpu_model.safetensors`` into CKPT (the step ``woqconv convert --to hpu`` replaces). Prints one JSON
line: the load's own seconds, layers INC repacked, and the cache it wrote.

    .venv/bin/python benchmarks/inc_route.py CKPT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ckpt = Path(sys.argv[1])
    from woqconv.runtime.inc_hpu import _quiet_libraries, counting_inc_repacks

    _quiet_libraries()
    import torch
    from neural_compressor.torch.quantization import load

    from woqconv.runtime.hpu_emulation import emulated_hpu

    start = time.perf_counter()
    with counting_inc_repacks() as repacks, emulated_hpu() as label:
        load(str(ckpt), format="huggingface", device="hpu", torch_dtype=torch.bfloat16)
    repacked = repacks[0]
    seconds = time.perf_counter() - start
    cache = ckpt / "hpu_model.safetensors"
    print(json.dumps({"device": label, "load_seconds": round(seconds, 3), "layers_repacked": repacked,
                      "cache_written": cache.exists(), "cache_bytes": cache.stat().st_size if cache.exists() else 0}))
    return 0 if cache.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
