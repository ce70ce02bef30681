"""Load checkpoints with their real loaders and record fp32 logits and perplexity, one process per call.

Run as a subprocess (gptqmodel can abort the interpreter on a bad checkpoint, and INC patches
globals): ``python -m woqconv.runtime.worker OUT_DIR DEVICE LOADER:PATH [...]``. Prints one JSON line
per checkpoint: {"path", "loader", "module", "file", "ppl", "device"} or {"path", "error"}.

``python -m woqconv.runtime.worker --serve`` is the same worker kept warm (runtime/runs.py starts it): it
imports torch and transformers once (about 5 s of every run here), then answers one request per stdin line by
forking a child that runs those arguments as above, so every run still has a process of its own.

Loaders:
  transformers  AutoModelForCausalLM: quant_method dispatch (gptq/awq -> gptqmodel, auto-round -> auto-round)
  inc           INC load(format="huggingface")
  inc-default   INC load(format="default") with the original model built from the checkpoint's config.json, or from
                the base model's (WOQCONV_BASE_MODEL_DIR) when the checkpoint records none
  inc-hpu       INC load(format="huggingface", device="hpu"): real Gaudi, or emulated on CPU
  inc-hpu-default  INC load(format="default", device="hpu", original_model=...): the same, by the default format's route
  gptqmodel     GPTQModel.load with its torch kernel: the loader that honours a GPTQ checkpoint's per-module
                ``dynamic`` (mixed precision), which transformers' dispatch ignores; loads in fp16 only, runs cast to fp32
  dense         the checkpoint's IR dequantized by woqconv into the plain fp32 architecture
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

PROMPT = [[1, 5, 9, 33, 100, 200, 7, 8, 9, 10, 11, 12, 250, 3, 64, 128]]
STREAM_LEN = 64
STREAM_SEED = 1234
# The directory of the base model's files (config.json, ...) for checkpoints that record no architecture.
BASE_ENV = "WOQCONV_BASE_MODEL_DIR"


def token_stream(vocab: int):
    """The built-in token stream perplexity is measured on: fixed, seeded, inside every vocabulary."""
    import torch

    g = torch.Generator().manual_seed(STREAM_SEED)
    return torch.randint(3, max(4, min(vocab, 32000)), (1, STREAM_LEN), generator=g)


def _load(loader: str, path: str, device: str):
    import torch

    if loader == "transformers":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, device_map=device, dtype=torch.float32), device
    if loader == "inc":
        from neural_compressor.torch.quantization import load

        return load(path, format="huggingface", device="cpu", torch_dtype=torch.float32), "cpu"
    if loader == "inc-default":
        from neural_compressor.torch.quantization import load

        # INC may assign the checkpoint's own tensors (bf16 when AutoRound wrote them) into the fp32
        # base; cast the loaded model to fp32, as a CPU user would, for fp32 logits.
        return load(path, format="default", original_model=_original_model(path), device="cpu").float(), "cpu"
    if loader == "inc-hpu-default":
        from neural_compressor.torch.quantization import load

        from .hpu_emulation import emulated_hpu

        with emulated_hpu() as label:
            return load(path, format="default", original_model=_original_model(path), device="hpu"), label
    if loader == "inc-hpu":
        from neural_compressor.torch.quantization import load

        from .hpu_emulation import emulated_hpu

        with emulated_hpu() as label:
            return load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16), label
    if loader == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel

        # TorchLinear builds in fp16 or bf16 only: the model loads in fp16 (its dense tensors rounded to it),
        # then runs in fp32 after the cast, like the others.
        return GPTQModel.load(path, device=device, backend=BACKEND.TORCH, dtype=torch.float16).model.float(), device
    if loader == "dense":
        return _dense(path), "cpu"
    raise ValueError(f"unknown loader {loader}")


def _config_dir(path: str) -> str:
    """Where a checkpoint's architecture is: its own config.json, else the base model verify was given
    (INC's default format records none; the user builds the original model, as INC's load() asks)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    base = os.environ.get(BASE_ENV)
    if not base:
        raise ValueError(f"{path} records no architecture (no config.json) and no base model was given")
    return base


def _original_model(path: str):
    """The original model INC's default format asks for, built from the architecture and holding the
    checkpoint's unquantized tensors: the weights a user's base model has (INC takes embeddings and norms
    from it unless the entries are awq/teq, and saved the same tensors in the same state dict)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(_config_dir(path)), dtype=torch.float32)
    _fill_base(base, path)
    return base


def _fill_base(model, path: str) -> None:
    """Put the checkpoint's unquantized tensors into a freshly built base model (the user's base)."""
    import torch

    from ..source import open_checkpoint

    with open_checkpoint(path) as ckpt:
        owned = ckpt.owned_tensors()
        names = set(model.state_dict())
        state = {n: ckpt.ckpt.read(n).to(torch.float32) for n in ckpt.ckpt.tensor_names if n not in owned and n in names}
    model.load_state_dict(state, strict=False)


def _dense(path: str):
    """woqconv's own reading, as a reference when no real loader of the source runs here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..source import open_checkpoint

    config = AutoConfig.from_pretrained(_config_dir(path))
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    with open_checkpoint(path) as ckpt:
        owned = ckpt.owned_tensors()
        for name in ckpt.ckpt.tensor_names:
            if name not in owned and not name.endswith(".scale_bf16_to_fp8"):
                state[name] = ckpt.ckpt.read(name).to(torch.float32)
        for layer in ckpt.iter_layers():
            module = layer.name[: -len(".linear")] if layer.name.endswith(".linear") else layer.name
            state[f"{module}.weight"] = layer.dequantize()
            if layer.bias is not None and bool(layer.bias.any()):
                state[f"{module}.bias"] = layer.bias.to(torch.float32)
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        raise ValueError(f"dense reference is missing {missing[:3]}")
    return model.eval()


def _run(model, device_label: str):
    import torch

    vocab = model.config.vocab_size
    dev = "cuda" if device_label == "cuda" else "cpu"
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT, device=dev)).logits.float().cpu()
        stream = token_stream(vocab).to(dev)
        out = model(stream).logits.float().cpu()
        nll = torch.nn.functional.cross_entropy(out[0, :-1], stream[0, 1:].cpu())
    return logits, float(torch.exp(nll))


def _quiet_libraries() -> None:
    os.environ.setdefault("LOGLEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str]) -> int:
    _quiet_libraries()
    import torch

    out_dir, device = Path(argv[0]), argv[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(argv[2:]):
        loader, path = spec.split(":", 1)
        try:
            model, label = _load(loader, path, device)
            logits, ppl = _run(model, label)
            file = out_dir / f"{i}.pt"
            torch.save(logits, file)
            try:
                module = type(model.model.layers[0].self_attn.q_proj).__name__
            except AttributeError:
                module = type(model).__name__
            row = {"path": path, "loader": loader, "module": module, "file": str(file), "ppl": ppl, "device": label}
        except Exception as e:  # the caller decides what a failed load means
            row = {"path": path, "loader": loader, "error": f"{type(e).__name__}: {e}".splitlines()[0][:500], "trace": traceback.format_exc()[-2000:]}
        print(json.dumps(row), flush=True)
    return 0


def serve() -> int:
    """Answer run requests, one JSON object per stdin line: {"argv": main's arguments, "cwd", "env": variables
    to set (null: unset), "stdout", "stderr": files for the run's output}. Each runs in a forked child (a
    loader's crash or global patches stay there); the answer is one line, {"exit": the child's exit code}.
    Only imports happen here, never a torch computation: a fork after one could inherit a started OpenMP
    pool that the child would wait on forever."""
    _quiet_libraries()
    import torch  # noqa: F401  (what every run imports first, kept for the children)
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_serve_one(request))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


def _serve_one(request: dict) -> int:
    """In the forked child: the run's directory, environment and output files, then :func:`main`."""
    code = 1
    try:
        os.chdir(request["cwd"])
        for key, value in request["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        code = main(request["argv"])
    except BaseException:  # the parent only learns the exit code; the reason goes to the run's stderr
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
