"""Time the 4-bit GPTQ <-> row-wise re-layout, per implementation, on a 7B model's layer shapes.

    .venv/bin/python benchmarks/relayout.py [--repeats 7] [--tiny]

Prints, per shape and direction, the median milliseconds of: numpy (packing.gptq4_to_rowwise_numpy,
the fallback), the C kernel one block at a time, and the C kernel as conversions run it (AVX2 where
the CPU has it). Every implementation's output is checked against the numpy one's. One thread; a 7B
conversion to AWQ re-lays out 32 x (3 MLP + 4 attention) of these layers. ``--tiny`` divides every
dimension by 32 (the test suite runs it so, to keep it working).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from woqconv.kernels import packing  # noqa: E402

SHAPES = {"mlp up/gate": (4096, 11008), "mlp down": (11008, 4096), "attention": (4096, 4096)}  # (in, out)


def _implementations() -> dict:
    found = {"numpy": (packing.gptq4_to_rowwise_numpy, packing.rowwise4_to_gptq_numpy)}
    native = packing._native
    if native is None:
        print("the C kernel is not built (woqconv/kernels/_relayout.c): numpy only")
        return found
    for name, to_rowwise, to_gptq in (
        ("C one block at a time", native.gptq4_to_rowwise_scalar, native.rowwise4_to_gptq_scalar),
        (f"C ({native.vector})", native.gptq4_to_rowwise, native.rowwise4_to_gptq),
    ):
        found[name] = (
            lambda src, order, dst, f=to_rowwise: f(src, dst, src.shape[0], src.shape[1] // 8, bytes(order)),
            lambda src, order, dst, f=to_gptq: f(src, dst, src.shape[0] // 8, src.shape[1], bytes(order)),
        )
    return found


def _median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="every dimension / 32")
    args = parser.parse_args()
    scale = 32 if args.tiny else 1
    implementations = _implementations()
    rng = np.random.default_rng(0)
    print(f"| shape (in x out) | direction | {' | '.join(implementations)} |")
    print("|---|---|" + "---:|" * len(implementations))
    for label, (in_features, out_features) in SHAPES.items():
        in_features, out_features = in_features // scale, out_features // scale
        label = f"{label} {in_features}x{out_features}"
        gptq = rng.integers(-(2**31), 2**31, size=(in_features // 8, out_features), dtype=np.int64).astype(np.int32)
        rowwise = np.empty((in_features, out_features // 8), dtype=np.int32)
        packing.gptq4_to_rowwise_numpy(gptq, packing.AWQ_ORDER, rowwise)
        for direction in ("GPTQ -> AWQ", "AWQ -> GPTQ"):
            source, want = (gptq, rowwise) if direction == "GPTQ -> AWQ" else (rowwise, gptq)
            cells = []
            for to_rowwise, to_gptq in implementations.values():
                kernel = to_rowwise if direction == "GPTQ -> AWQ" else to_gptq
                out = np.empty_like(want)
                ms = _median_ms(lambda: kernel(source, packing.AWQ_ORDER, out), args.repeats)
                if not np.array_equal(out, want):
                    raise SystemExit(f"{label} {direction}: an implementation's words differ from numpy's")
                cells.append(f"{ms:.1f}")
            print(f"| {label} | {direction} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
