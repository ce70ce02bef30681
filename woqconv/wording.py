"""How woqconv's messages count things: "1 layer", "2 layers", and changes summed over layers."""

from __future__ import annotations

import re
from typing import Iterable, Mapping


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1 (``plural`` for irregular nouns)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def change_lines(layer_changes: Mapping[str, Iterable[str]]) -> list[str]:
    """What a conversion changed, one line per kind, for people: "56 layers: 1234 zero points of 0 stored
    as all-ones fields (INC's modular v1)".

    A change that starts with a count (a number, then a space: "21636 zero points of 0 ...") is one kind
    whatever the number, and its counts are summed over the layers; grouping by the exact text printed
    one line per layer of a 7B checkpoint. Any other change ("4-bit codes stored in u4 constants") is a
    kind of its own, as written.
    """
    layers: dict[str, int] = {}
    totals: dict[str, int] = {}
    for changes in layer_changes.values():
        for change in changes:
            m = _COUNTED.match(change)
            kind = m.group(2) if m else change
            layers[kind] = layers.get(kind, 0) + 1
            if m:
                totals[kind] = totals.get(kind, 0) + int(m.group(1))
    return [f"{counted(n, 'layer')}: " + (f"{totals[kind]} {kind}" if kind in totals else kind) for kind, n in sorted(layers.items())]


_COUNTED = re.compile(r"^(\d+) (.+)$", re.DOTALL)


def lossy_lines(lossy_layers: dict[str, dict], requantized: dict[str, dict], rounded: dict[str, dict] | None = None) -> list[str]:
    """The accepted losses, summarised: shared by the CLI table and the Hub model card."""
    lines = []
    by_kind: dict[str, dict[str, dict]] = {}
    for name, v in lossy_layers.items():
        by_kind.setdefault(v.get("kind", "bf16"), {})[name] = v
    for kind, what, unit in (("bf16", "bf16 scales", "scales"), ("double-quant", "double-quantized absmax", "absmax")):
        layers = by_kind.get(kind)
        if layers:
            changed = sum(v[f"{unit}_changed"] for v in layers.values())
            total = sum(v[f"{unit}_total"] for v in layers.values())
            worst = max(v["max_rel_change"] for v in layers.values())
            lines.append(f"{what}: {changed} of {total} changed in {counted(len(layers), 'layer')}, largest relative change {worst:.3g}")
    if requantized:
        rel = [v["rel_fro"] for v in requantized.values()]
        snr = [v["snr_db"] for v in requantized.values()]
        method = next(iter(requantized.values()))["method"]
        line = (f"requantized {counted(len(rel), 'layer')} ({method}): relative Frobenius error {min(rel):.4f}..{max(rel):.4f}, "
                f"SNR {min(snr):.2f}..{max(snr):.2f} dB")
        minmax = [v["minmax"]["rel_fro"] for v in requantized.values() if "minmax" in v]
        if minmax:
            line += f" (min-max rounding: {min(minmax):.4f}..{max(minmax):.4f})"
        lines.append(line)
    elif "requantize" in by_kind:
        lines.append(f"{counted(len(by_kind['requantize']), 'layer')} to requantize")
    if rounded:
        dtype = next(iter(rounded.values()))["dtype"]
        changed = sum(v["values_changed"] for v in rounded.values())
        total = sum(v["values_total"] for v in rounded.values())
        rel = [v["rel_fro"] for v in rounded.values()]
        lines.append(f"dequantized weights rounded to {dtype}: {changed} of {total} changed in {counted(len(rounded), 'layer')}, "
                     f"relative Frobenius error {min(rel):.3g}..{max(rel):.3g}, largest |err| {max(v['max_abs'] for v in rounded.values()):.3g}")
    return lines
