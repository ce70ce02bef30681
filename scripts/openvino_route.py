"""woqconv's ``openvino`` target beside the route OpenVINO's documentation gives for GPTQ checkpoints.

The documented route is optimum-intel's export of the GPTQ checkpoint itself (``optimum-cli export
openvino -m GPTQ_DIR OUT`` = ``optimum.exporters.openvino.main_export``), which loads the checkpoint
through transformers + gptqmodel and lets OpenVINO's PyTorch frontend trace the GPTQ modules. Both run
here on CPU, in .venv-ov for optimum-intel, for each checkpoint given:

    .venv/bin/python scripts/openvino_route.py [CHECKPOINT ...] [--format json]

Reported per route: export wall time, OpenVINO file size (xml + bin), whether the u4 codes and zero
points are the source's (read back from the IR by OpenVINO), how many dequantized weights equal the
source's IR dequantization bit for bit, layers the CPU plugin fused, and max |logit diff| against the
source run by its own loader (transformers + gptqmodel) with OVModelForCausalLM in the f32 profile
(no dynamic quantization) and in the CPU plugin's default profile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import woqconv  # noqa: E402
from woqconv.runtime.openvino_check import decompressed_weights, fused_layers  # noqa: E402
from woqconv.runtime.runs import run_logits  # noqa: E402
from woqconv.formats.openvino.export import run_worker  # noqa: E402

DEFAULT = ["fixtures/ar-g32-asym-auto_gptq", "fixtures/ar-g128-sym-auto_gptq"]


def compare(out: Path, src: Path) -> dict:
    """What OpenVINO reads back from ``out`` against the source's IR."""
    got = decompressed_weights(out)
    fused, _ = fused_layers(out)
    same_codes = same_zeros = same_weights = layers = 0
    worst = 0.0
    with woqconv.open_checkpoint(src) as ckpt:
        for layer in ckpt.iter_layers():
            layers += 1
            d = got.get(layer.name)
            if d is None:
                continue
            flat = layer.with_contiguous_groups()
            want = layer.dequantize()
            same_codes += torch.equal(d.codes, layer.codes.float())
            same_zeros += d.zeros is not None and torch.equal(d.zeros, flat.zeros.float())
            w = d.weight.float()
            same_weights += torch.equal(w.view(torch.int32), want.view(torch.int32))
            worst = max(worst, float((w - want).abs().max()))
    types = sorted({d.codes_type for d in got.values()})
    return {"layers": layers, "compressed": len(got), "codes_type": "/".join(types), "codes_equal": same_codes,
            "zero_points_equal": same_zeros, "weights_bit_exact": same_weights, "max_abs_weight_diff": worst, "fused": fused}


def size_mb(out: Path) -> float:
    return sum((out / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin")) / 1e6


def measure(src: Path, work: Path) -> list[dict]:
    rows = []
    ours, theirs = work / "woqconv", work / "optimum-intel"
    start = time.perf_counter()
    woqconv.convert(src, ours, to="openvino")
    rows.append({"route": "woqconv convert --to openvino", "out": ours, "seconds": time.perf_counter() - start})
    start = time.perf_counter()
    result = run_worker(["route", str(src.resolve()), str(theirs)])[0]
    row = {"route": "optimum-intel export (documented)", "out": theirs, "seconds": time.perf_counter() - start}
    if "error" in result:
        row["error"] = result["error"]
    rows.append(row)
    ref_dir = work / "logits"
    ref_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "woqconv.runtime.worker", str(ref_dir / "src"), "cpu", f"transformers:{src.resolve()}"],
                          capture_output=True, text=True, timeout=1800)
    ref = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][0]
    ref_logits = torch.load(ref["file"])
    ok = [r for r in rows if "error" not in r]
    runs = run_logits(ref_dir, ["f32", "default"], [r["out"] for r in ok])
    for i, r in enumerate(ok):
        r.update(compare(r["out"], src))
        r["size_mb"] = size_mb(r["out"])
        for j, profile in enumerate(("f32", "default")):
            run = runs[j * len(ok) + i]
            r[f"logit_diff_{profile}"] = float((torch.load(run["file"]) - ref_logits).abs().max()) if "error" not in run else run["error"]
    for r in rows:
        r["source"] = str(src)
        r["reference"] = f"transformers ({ref['module']})"
        r.pop("out")
    return rows


def table(rows: list[dict]) -> str:
    head = ("| source | route | export s | xml+bin MB | codes kept | zero points kept | weights bit-exact | max abs weight diff "
            "| fused | max abs logit diff f32 | default profile |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {Path(r['source']).name} | {r['route']} | failed: {r['error']} | | | | | | | | |")
            continue
        n = r["layers"]
        lines.append(
            f"| {Path(r['source']).name} | {r['route']} | {r['seconds']:.1f} | {r['size_mb']:.3f} | {r['codes_equal']}/{n} ({r['codes_type']}) "
            f"| {r['zero_points_equal']}/{n} | {r['weights_bit_exact']}/{n} | {r['max_abs_weight_diff']:.3g} | {r['fused']}/{n} "
            f"| {r['logit_diff_f32']:.3g} | {r['logit_diff_default']:.3g} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=DEFAULT)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    rows = []
    for ckpt in args.checkpoints:
        with tempfile.TemporaryDirectory(prefix="woqconv-ov-route-") as tmp:
            rows += measure(Path(ckpt), Path(tmp))
    print(json.dumps(rows, indent=1) if args.format == "json" else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
