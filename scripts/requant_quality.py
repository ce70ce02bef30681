"""What requantization costs, measured where perplexity means something.

The fixtures are random-init models whose next-token perplexity is ~vocab size whatever their
weights, so they cannot rank requantization methods. This script trains the same tiny Llama
architecture (fixed seeds, a few hundred CPU steps) on a synthetic language with real structure (a
fixed sparse Markov chain over the vocabulary), then:

1. quantizes it to NF4 with transformers + bitsandbytes (saved before any forward, PEERS.md 3.3);
2. converts that NF4 checkpoint with woqconv ``--to gptq --requantize`` twice: the error search and
   plain min-max rounding, and ``--to hpu --requantize`` (search, bf16 scales);
3. loads every checkpoint with its real loader (transformers + bitsandbytes / gptqmodel, INC's Gaudi
   path under the CPU emulation) and measures perplexity on held-out text of the same language.

Prints a table and writes JSON (``--json``). Run after set-up::

    .venv/bin/python scripts/requant_quality.py [--steps 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

VOCAB, HIDDEN, INTER, LAYERS = 256, 128, 384, 2
SEQ, BATCH = 64, 32
SEED = 0


def markov_chain(seed: int = 7) -> torch.Tensor:
    """Skip-bigram transitions over tokens 3..255: the next token depends on the token TWO positions back,
    so the model must move it there through attention (a bigram table in the embeddings cannot), and
    the attention and MLP weights that requantization changes carry the prediction. Each context has 4
    likely successors (80 % of the mass) and a uniform tail: perplexity ~12 at best."""
    g = torch.Generator().manual_seed(seed)
    n = VOCAB - 3
    probs = torch.full((n, n), 0.2 / n)
    for i in range(n):
        succ = torch.randperm(n, generator=g)[:4]
        probs[i, succ] += torch.tensor([0.4, 0.2, 0.12, 0.08])
    return probs / probs.sum(1, keepdim=True)


def sample(probs: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = probs.shape[0]
    x = torch.empty(batch, SEQ, dtype=torch.long)
    x[:, :2] = torch.randint(0, n, (batch, 2), generator=g)
    for t in range(2, SEQ):
        context = x[:, t - 2]
        x[:, t] = torch.multinomial(probs[context], 1, generator=g).squeeze(1)
    return x + 3


def train(out: Path, steps: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    probs = markov_chain()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        batch = sample(probs, BATCH, seed=1000 + step)
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  train step {step}: loss {loss.item():.3f}", flush=True)
    model.to(torch.float16).save_pretrained(out)


EVAL = r"""
import json, math, sys, torch
sys.path.insert(0, sys.argv[1])
from requant_quality import markov_chain, sample
loader, path = sys.argv[2], sys.argv[3]
data = sample(markov_chain(), 16, seed=99)  # held out: training used seeds 1000+
if loader == "inc-hpu":
    from neural_compressor.torch.quantization import load
    from woqconv.runtime.hpu_emulation import emulated_hpu
    with emulated_hpu():
        model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
with torch.no_grad():
    logits = model(data).logits.float()
nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
print(json.dumps({"ppl": math.exp(nll.item()), "module": type(model.model.layers[0].self_attn.q_proj).__name__}))
"""


def evaluate(loader: str, path: Path, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", EVAL, str(Path(__file__).parent), loader, str(path)],
                          capture_output=True, text=True, timeout=1800, cwd=cwd)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise SystemExit(f"{loader}:{path} failed:\n{proc.stderr[-3000:]}")
    return rows[0]


def quantize_nf4(base: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=cfg, device_map="cpu", dtype=torch.float16)
    model.save_pretrained(out)  # before any forward (PEERS.md 3.3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the checkpoints in this directory")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from woqconv.convert import convert

    work = Path(args.keep or tempfile.mkdtemp(prefix="woqconv-requant-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base, nf4 = work / "base-fp16", work / "nf4"
    for d in (base, nf4):
        shutil.rmtree(d, ignore_errors=True)
    print(f"training the tiny Llama for {args.steps} steps on the synthetic language ...", flush=True)
    train(base, args.steps)
    quantize_nf4(base, nf4)
    results = {"steps": args.steps, "models": {}}
    reports = {}
    for name, to, method in (("gptq-search", "gptq", "search"), ("gptq-minmax", "gptq", "minmax"), ("hpu-search", "hpu", "search")):
        shutil.rmtree(work / name, ignore_errors=True)
        r = convert(nf4, work / name, to=to, requantize=method, allow_bf16=to == "hpu")
        reports[name] = r.requantized
    runs = [("fp16 base (unquantized)", "transformers", base), ("nf4 source (bitsandbytes)", "transformers", nf4),
            ("gptq, woqconv search", "transformers", work / "gptq-search"),
            ("gptq, min-max rounding", "transformers", work / "gptq-minmax"),
            ("hpu, woqconv search (INC Gaudi path, bf16)", "inc-hpu", work / "hpu-search")]
    rows = []
    for label, loader, path in runs:
        res = evaluate(loader, path, work)
        key = path.name
        errs = reports.get(key)
        rel = sum(v["rel_fro"] for v in errs.values()) / len(errs) if errs else None
        snr = sum(v["snr_db"] for v in errs.values()) / len(errs) if errs else None
        results["models"][key] = {"label": label, "loader": loader, "module": res["module"], "ppl": res["ppl"],
                                  "mean_rel_fro_vs_nf4": rel, "mean_snr_db_vs_nf4": snr}
        rows.append((label, res["module"], res["ppl"], rel, snr))
    search = reports["gptq-search"]
    results["layers_search_better"] = sum(v["rel_fro"] < v["minmax"]["rel_fro"] for v in search.values())
    results["layers"] = len(search)
    results["seconds"] = round(time.time() - t0, 1)
    print(f"\nheld-out perplexity (16 x {SEQ} tokens of the synthetic language; ideal ~12):")
    print(f"{'checkpoint':46} {'module':22} {'ppl':>8} {'rel.err':>8} {'SNR dB':>7}")
    for label, module, ppl, rel, snr in rows:
        print(f"{label:46} {module:22} {ppl:8.3f} {'' if rel is None else f'{rel:8.4f}'} {'' if snr is None else f'{snr:7.2f}'}")
    print(f"search beat min-max on {results['layers_search_better']} of {results['layers']} layers; {results['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
