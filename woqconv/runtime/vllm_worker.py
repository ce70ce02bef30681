"""vLLM's side of ``woqconv verify``: a checkpoint served by vLLM itself, run by vLLM's environment's Python.

vLLM pins its own transformers and compressed-tensors, so it lives in a virtual environment of its own
(``.venv-vllm``, made by scripts/setup.sh) and this file runs there by path, importing nothing from woqconv:

    python vllm_worker.py RESULT_DIR DEVICE PATH [...]     # shared inputs: $WOQCONV_SHARED_INPUTS

For each checkpoint it starts ``vllm.LLM`` (bf16: vLLM's CPU W4A16 kernel takes no fp32 activations) and asks
for the prompt's log-probabilities: for every position of woqconv's shared prompt, the ``top`` most likely
next tokens with their log-probabilities (the whole vocabulary where vLLM allows that many), and the
perplexity of the shared token stream from the stream's own prompt log-probabilities. Prints one JSON line
per checkpoint: {"path", "loader", "module", "file", "ppl", "device", "top"} or {"path", "error"}; ``file``
holds ``{"ids": int64 [positions, top], "logprobs": float32 [positions, top]}``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import sys
import traceback
from pathlib import Path

SHARED_INPUTS_ENV = "WOQCONV_SHARED_INPUTS"
MAX_TOP = 512  # whole vocabularies up to this size; the most likely 512 tokens of larger ones


def _shared():
    spec = importlib.util.spec_from_file_location("_woqconv_worker", os.environ[SHARED_INPUTS_ENV])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vocab(path: str) -> int:
    config = json.loads((Path(path) / "config.json").read_text())
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))


def _rows(llm, ids: list[int], top: int):
    """(token ids, log-probs) for every position of ``ids``: the prompt's positions 1.. from vLLM's prompt
    log-probabilities, the last one from the first generated token's."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top, logprobs=top, detokenize=False)
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    positions = [*out.prompt_logprobs[1:], out.outputs[0].logprobs[0]]
    return positions, out.prompt_logprobs


def run(result_dir: str, device: str, path: str, index: int) -> dict:
    import torch
    from vllm import LLM

    shared = _shared()
    vocab = _vocab(path)
    top = min(vocab, MAX_TOP)
    stream = shared.token_stream(vocab)[0].tolist()
    llm = LLM(model=path, dtype="bfloat16", enforce_eager=True, max_model_len=max(len(stream), len(shared.PROMPT[0])) + 8,
              max_logprobs=top, seed=0, tokenizer=None, skip_tokenizer_init=True)
    positions, _ = _rows(llm, shared.PROMPT[0], top)
    ids = torch.full((len(positions), top), -1, dtype=torch.int64)
    logprobs = torch.full((len(positions), top), float("-inf"), dtype=torch.float32)
    for p, entries in enumerate(positions):
        ranked = sorted(entries.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:top]
        for k, (token, lp) in enumerate(ranked):
            ids[p, k], logprobs[p, k] = token, lp.logprob
    _, stream_logprobs = _rows(llm, stream, 1)
    nll = -sum(stream_logprobs[i][stream[i]].logprob for i in range(1, len(stream))) / (len(stream) - 1)
    file = Path(result_dir) / f"vllm-{index}.pt"
    torch.save({"ids": ids, "logprobs": logprobs}, file)
    method = getattr(llm.llm_engine.model_config, "quantization", None)
    del llm  # one engine at a time: the next checkpoint's load needs its memory
    gc.collect()
    return {"path": path, "loader": "vllm", "module": f"vLLM ({method or 'unquantized'})", "file": str(file),
            "ppl": math.exp(nll), "device": device, "top": top}


def _reason(e: Exception) -> str:
    """One line: vLLM's config errors come wrapped in pydantic's ("1 validation error for VllmConfig", then the
    reason on a line of its own, then a link): keep the reason."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reasons = [line.removeprefix("Value error, ").split(" [type=")[0] for line in lines if line.startswith("Value error, ")]
    return f"{type(e).__name__}: {'; '.join(reasons) if reasons else (lines[0] if lines else '')}"


def main(argv: list[str]) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the runs are one short sequence
    # The engine in this process: a spawned engine process imports torch and vLLM again (58 s against 19 s for
    # two tiny checkpoints here).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    result_dir, device, paths = argv[0], argv[1], argv[2:]
    for i, path in enumerate(paths):
        try:
            row = run(result_dir, device, path, i)
        except Exception as e:  # reported to the caller, which names the checkpoint
            row = {"path": path, "loader": "vllm", "error": _reason(e)[:500], "trace": traceback.format_exc()[-3000:]}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":  # vLLM's engine starts its workers with spawn: they import this file again
    sys.exit(main(sys.argv[1:]))
