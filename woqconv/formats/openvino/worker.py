"""optimum-intel's side of the ``openvino`` target, run by the OpenVINO environment's Python.

optimum-intel 2.2 imports names that transformers 5.23 (woqconv's environment) no longer has, so
the dense export and the ``OVModelForCausalLM`` run happen in a second virtual environment
(``.venv-ov``, made by scripts/setup.sh, transformers < 5.6) as a subprocess. This file is run by
path there and imports nothing from woqconv (woqconv's own dependencies are not installed in it):

    python worker.py export DENSE_DIR OUT_DIR        # optimum-intel export of the architecture
    python worker.py run RESULT_DIR PROFILE[,PROFILE] OV_DIR [...]   # OVModelForCausalLM on CPU, logits ($WOQCONV_SHARED_INPUTS)
    python worker.py route GPTQ_DIR OUT_DIR          # optimum-intel's own export of a GPTQ checkpoint

Each prints one JSON line per job: a result, or {"error": ...}; the caller decides what a failure means.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path


# The caller of ``run`` names the file of the shared inputs (woqconv/runtime/worker.py: PROMPT and
# token_stream, stdlib-only at import), so this run and woqconv's loaders feed the models the same tokens.
SHARED_INPUTS_ENV = "WOQCONV_SHARED_INPUTS"


def _shared():
    """PROMPT and the perplexity stream, from the file $WOQCONV_SHARED_INPUTS names."""
    spec = importlib.util.spec_from_file_location("_woqconv_worker", os.environ[SHARED_INPUTS_ENV])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(dense_dir: str, out_dir: str) -> dict:
    """The architecture of DENSE_DIR (config.json) exported by optimum-intel, stateful, with the
    unquantized tensors of DENSE_DIR/model.safetensors. Quantized linears keep their random init:
    the caller replaces every one of them."""
    import torch
    from optimum.exporters.openvino.convert import export_from_model
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    start = time.perf_counter()
    info = json.loads((Path(dense_dir) / "woqconv-dense.json").read_text())
    config = AutoConfig.from_pretrained(dense_dir)
    dtype = getattr(torch, info["dtype"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    state = {k: v.to(dtype) for k, v in load_file(str(Path(dense_dir) / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"tensors the architecture does not have: {unexpected[:3]}")
    # ov_config=None: no weight compression of optimum-intel's own (it would re-round the weights).
    export_from_model(model, out_dir, task="text-generation-with-past", ov_config=None, stateful=True)
    return {"seconds": time.perf_counter() - start, "randomly_initialised": sorted(missing)}


# CPU plugin settings per run profile. "f32" computes what the graph says: fp32 inference and no dynamic
# quantization (by default the CPU plugin quantizes the activations of FullyConnected layers with u4/u8
# weights to int8 in groups of 32, which moves the tiny fixtures' logits by ~8e-3). "f32-dynq" keeps that
# default; "default" is the plugin's own choice (bf16 inference where the CPU has it).
PROFILES = {
    "f32": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    "f32-dynq": {"INFERENCE_PRECISION_HINT": "f32"},
    "default": {},
}


def run(result_dir: str, profile: str, ov_dir: str, index: int) -> dict:
    """Logits of the shared prompt and perplexity on the shared stream, with OVModelForCausalLM on CPU."""
    import torch
    from optimum.intel import OVModelForCausalLM

    shared = _shared()
    config = {**PROFILES[profile], "CACHE_DIR": ""}
    model = OVModelForCausalLM.from_pretrained(ov_dir, device="CPU", ov_config=config)
    precision = model.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def forward(ids):
        ids = torch.as_tensor(ids)
        # A fresh sequence each call: the stateful model's KV cache is reset when no past is given.
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()

    with torch.no_grad():
        logits = forward(shared.PROMPT)
        stream = shared.token_stream(model.config.vocab_size)
        out = forward(stream)
        nll = torch.nn.functional.cross_entropy(out[0, :-1], stream[0, 1:])
    file = Path(result_dir) / f"openvino-{profile}-{index}.pt"
    torch.save(logits, file)
    return {"path": ov_dir, "loader": "openvino", "module": "OVModelForCausalLM", "file": str(file),
            "ppl": float(torch.exp(nll)), "device": f"cpu (openvino, {profile}: {precision})"}


def route(gptq_dir: str, out_dir: str) -> dict:
    """The route OpenVINO's documentation gives for a GPTQ checkpoint: optimum-intel's export of it."""
    from optimum.exporters.openvino import main_export

    start = time.perf_counter()
    main_export(gptq_dir, output=out_dir, task="text-generation-with-past")
    return {"seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command, args = argv[0], argv[1:]
    jobs = {
        "export": lambda: [export(args[0], args[1])],
        "route": lambda: [route(args[0], args[1])],
        "run": lambda: [run(args[0], p, d, i) for p in args[1].split(",") for i, d in enumerate(args[2:])],
    }
    if command not in jobs:
        print(json.dumps({"error": f"unknown command {command}"}), flush=True)
        return 2
    try:
        for row in jobs[command]():
            print(json.dumps(row), flush=True)
    except Exception as e:  # reported to the caller, which names the checkpoint
        print(json.dumps({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500], "trace": traceback.format_exc()[-3000:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
