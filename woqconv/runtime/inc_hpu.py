"""Load an ``hpu`` or ``hpu-default`` output through INC's own Gaudi path and show that INC repacked nothing.

On a Gaudi host this is INC's real ``load(..., device="hpu")``; elsewhere it runs the same INC code
under :func:`woqconv.runtime.hpu_emulation.emulated_hpu` and says so. The logits are compared with
INC's CPU load of the same checkpoint's primary (fp16-scale) weights.

An ``hpu`` output is loaded by INC's huggingface route, ``load(OUT, format="huggingface", device="hpu")``;
an ``hpu-default`` output by the default format's route, as the Gaudi recipe writes it:
``load(model_name_or_path=OUT, format="default", device="hpu",
original_model=AutoModelForCausalLM.from_pretrained(BASE))``, with BASE the original model (``--base-model``).

    python -m woqconv.runtime.inc_hpu OUT [--base-model BASE] [--format json]
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io.checkpoint import HPU_CACHES
from ..errors import WoqconvError

PROMPT = [[1, 5, 9, 33, 100, 200, 7, 8, 9, 10, 11, 12, 250, 3, 64, 128]]


@dataclass
class HpuLoadReport:
    path: str
    device: str  # "hpu" or "hpu (emulated on CPU)"
    cache: str  # the cache file INC read
    hpu_modules: int  # layers INC built as HPUWeightOnlyLinear
    layers_repacked: int  # layers INC had to unpack and repack (0 when the cache was used)
    max_abs_diff_vs_cpu_fp32: float  # vs INC's CPU load of the fp16-scale weights
    top1_agreement: float


@contextmanager
def counting_inc_repacks():
    """Count the layers INC unpacks (to repack them for Gaudi) while the block runs: yields a one-item
    list holding the count. INC unpacks a layer only when no usable HPU cache gave it the packed form."""
    from neural_compressor.torch.algorithms.weight_only import modules

    count = [0]
    original_unpack = modules.INCWeightOnlyLinear.unpack

    def counting_unpack(self, *a, **k):
        count[0] += 1
        return original_unpack(self, *a, **k)

    modules.INCWeightOnlyLinear.unpack = counting_unpack
    try:
        yield count
    finally:
        modules.INCWeightOnlyLinear.unpack = original_unpack


def load_through_inc_hpu(path: str | Path, base_model: str | Path | None = None) -> HpuLoadReport:
    import torch
    from neural_compressor.torch.quantization import load
    from transformers import AutoModelForCausalLM

    from .hpu_emulation import emulated_hpu

    path = Path(path)
    cache = next((c for c in HPU_CACHES if (path / c).exists()), None)
    if cache is None:
        raise WoqconvError("no INC Gaudi cache here (hpu_model.safetensors or quantized_hpu_weight.pt): convert with --to hpu "
                           "or --to hpu-default first", file=path)
    default_route = cache != "hpu_model.safetensors"
    if default_route and base_model is None:
        raise WoqconvError("INC's default format loads with original_model: pass --base-model, the original model's directory", file=path)
    with counting_inc_repacks() as repacks, emulated_hpu() as label:
        if default_route:
            # The Gaudi recipe's call, verbatim.
            model = load(model_name_or_path=str(path), format="default", device="hpu",
                         original_model=AutoModelForCausalLM.from_pretrained(str(base_model)))
        else:
            model = load(str(path), format="huggingface", device="hpu", torch_dtype=torch.bfloat16)
        with torch.no_grad():
            hpu_logits = model(torch.tensor(PROMPT)).logits.float().cpu()
    repacked = repacks[0]
    hpu_modules = sum(type(m).__name__ == "HPUWeightOnlyLinear" for m in model.modules())
    if default_route:
        cpu = load(str(path), format="default", device="cpu", original_model=AutoModelForCausalLM.from_pretrained(str(base_model),
                                                                                                                dtype=torch.float32))
    else:
        cpu = load(str(path), format="huggingface", device="cpu", torch_dtype=torch.float32)
    with torch.no_grad():
        cpu_logits = cpu(torch.tensor(PROMPT)).logits.float()
    return HpuLoadReport(
        path=str(path),
        device=label,
        cache=cache,
        hpu_modules=hpu_modules,
        layers_repacked=repacked,
        max_abs_diff_vs_cpu_fp32=float((hpu_logits - cpu_logits).abs().max()),
        top1_agreement=float((hpu_logits.argmax(-1) == cpu_logits.argmax(-1)).float().mean()),
    )


def _quiet_libraries() -> None:
    """INC and transformers log every load step at INFO; the report says what matters."""
    import logging
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("LOGLEVEL", "ERROR")  # INC reads its log level from this when its logger starts
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    for name in ("neural_compressor", "transformers", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m woqconv.runtime.inc_hpu", description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--base-model", help="the original model (a directory with its weights), for INC's default format")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        # INC's default-format loader prints its progress on stdout, which carries the report.
        with redirect_stdout(sys.stderr):
            report = load_through_inc_hpu(args.path, args.base_model)
    except WoqconvError as e:
        print(f"woqconv: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    if args.format == "json":
        print(json.dumps(asdict(report), indent=2, sort_keys=True))
    else:
        print(
            f"INC loaded {report.path} on {report.device} from {report.cache}: "
            f"{report.hpu_modules} HPUWeightOnlyLinear layers, {report.layers_repacked} repacked; "
            f"logits vs INC's CPU fp32 load: max |diff| {report.max_abs_diff_vs_cpu_fp32:.3g} (bf16), "
            f"top-1 agreement {report.top1_agreement:.0%}"
        )
    return 0 if report.layers_repacked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
