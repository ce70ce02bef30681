"""Rich rendering of the API's report objects. No logic beyond presentation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from ..wording import change_lines, counted

if TYPE_CHECKING:  # annotations only: rendering imports nothing that computes
    from ..convert import ConvertReport
    from ..hub.push import PushReport
    from ..inspection import InspectReport
    from ..migrate import MigrationEntry, MigrationReport
    from ..runtime.report import VerifyReport


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


_UNKNOWN = "(unknown: needs tensor data)"


def _options(message: str | None) -> str:
    """A message in the API's words (`` `overwrite=True` ``) as the command line names its options."""
    from ..errors import as_options
    from ._errors import OPTION_ALIASES

    return as_options(message or "", OPTION_ALIASES)


def _convention(label: str) -> str:
    return {"v1": "v1 (stored z-1)", "v2": "v2 (stored z)"}.get(label, label)


def _precision_line(p: dict) -> str:
    """"8-bit g32 sym: 2 layers (model.layers.0.mlp.down_proj, ...)": the largest group needs no names."""
    sym = "" if p["sym"] is None else " sym" if p["sym"] else " asym"
    names = p["names"]
    shown = ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")
    group = "per-channel" if p["group_size"] == -1 else f"g{p['group_size']}"
    return f"{p['bits']}-bit {group}{sym}: {p['layers']} layer{'s' if p['layers'] != 1 else ''} ({shown})"


def inspect_report(console: Console, r: InspectReport, *, layers: bool) -> None:
    t = Table(title=f"woqconv inspect {r.path}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    method = r.quant_method + (f" ({r.packing_format})" if r.packing_format else "")
    zp = _convention(r.zero_point_convention) + f"  [dim]found by {r.zero_point_convention_source}[/dim]"
    if "zero_point_convention" in r.needs_tensor_data:
        zp = _convention(r.zero_point_convention) + f"  [dim]as declared ({r.zero_point_convention_source}); {_UNKNOWN[1:-1]} to confirm[/dim]"
    if r.zero_point_convention != r.zero_point_convention_declared:
        zp += f"  [yellow]declared {_convention(r.zero_point_convention_declared)}[/yellow]"
    rows = [
        ("format", r.format),
        ("producer", r.producer),
        ("method", method),
        ("bits", str(r.bits)),
        ("group size", str(r.group_size)),
        ("sym", (_UNKNOWN if r.sym is None else f"{r.sym}") + ("" if r.sym_declared in (None, r.sym) else f"  [yellow]declared {r.sym_declared}[/yellow]")),
        ("zero-point convention", zp),
        ("g_idx", (_UNKNOWN if r.g_idx == "unknown" else r.g_idx) + ("" if r.desc_act_declared is None else f"  [dim]desc_act declared {r.desc_act_declared}[/dim]")),
        ("scales dtype", ", ".join(r.scales_dtypes)),
        ("quantized modules", str(r.quantized_modules)),
        ("unquantized tensors", str(r.unquantized_tensors)),
        ("quantized parameters", f"{r.quantized_parameters:,}"),
        ("bits per weight", f"{r.bits_per_weight:.3f}"),
        ("size", f"{_size(r.total_bytes)} in {r.shards} shard(s)"),
    ]
    if r.architecture:
        a = r.architecture
        arch = (a.get("architectures") or [a.get("model_type")])[0]
        rows.insert(0, ("architecture", f"{arch}, hidden size {a.get('hidden_size')}, {a.get('num_hidden_layers')} layers"
                        + ("" if r.architecture_from == "config.json" else f"  [dim]from base model {r.architecture_from}[/dim]")))
    else:
        recorded = f"; INC recorded model_path {r.model_path_recorded!r}" if r.model_path_recorded else ""
        rows.insert(0, ("architecture", f"[yellow]not recorded in the checkpoint[/yellow] (no config.json{recorded}): "
                        "pass --base-model PATH_OR_REPO, the original model"))
    if r.codebook:
        cb = r.codebook
        table = (f"{', '.join(cb['quant_type'])}, blocks of {', '.join(map(str, cb['blocksizes']))}"
                 + (", absmax double-quantized" if cb["double_quant"] else ", absmax fp32"))
        drop = {"sym", "zero-point convention", "g_idx", "scales dtype", "group size"}
        rows = [row for row in rows if row[0] not in drop]
        rows[3:3] = [("code table", table), ("weight dtype", ", ".join(cb["weight_dtypes"]))]
    if r.gaudi_cache:
        g = r.gaudi_cache
        what = (f"{g['file']}: {g['layout']} layout, {g['layers']} layers, scales {', '.join(g['scales_dtypes'])}; "
                + ("INC's Gaudi load reads it and repacks no layer" if g["covers_every_layer"]
                   else "[yellow]it lacks some quantized layers: INC's Gaudi load repacks[/yellow]"))
        rows.append(("Gaudi cache", what))
    if r.mixed:
        i = next(i for i, row in enumerate(rows) if row[0] == "group size") + 1
        rows[i:i] = [("precision", "mixed: " + "; ".join(_precision_line(p) for p in r.precisions))]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    if layers:
        lt = Table(title="quantized layers", title_justify="left")
        for col in ("name", "in", "out", "bits", "group", "g_idx", "sym", "scales", "bias"):
            lt.add_column(col, justify="right" if col in ("in", "out", "bits", "group") else "left", overflow="fold")
        for layer in r.layers:
            lt.add_row(
                layer.name, str(layer.in_features), str(layer.out_features), str(layer.bits), str(layer.group_size),
                layer.g_idx, "?" if layer.sym is None else "yes" if layer.sym else "no", layer.scales_dtype, "yes" if layer.bias else "no",
            )
        console.print(lt)
    if r.compression_table:
        compression_table(console, r.compression_table)
    if r.engines:
        engines_table(console, r.engines)
    for w in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {_options(w)}")
    if r.needs_tensor_data:
        console.print(f"[dim]read from the config and safetensors headers only; unknown without tensor data: {', '.join(r.needs_tensor_data)}[/dim]")


def _share(part: int, total: int, layers: int, of_layers: int) -> str:
    """NNCF's "86% (14 / 17)": share of the weights, then layers."""
    return f"{part / max(total, 1) * 100:.0f}% ({layers} / {of_layers})"


def compression_table(console: Console, table: dict) -> None:
    """NNCF's bitwidth table (OpenVINO sources), with the layers of each mode named."""
    t = Table(title="weight compression (NNCF's bitwidth distribution, from the IR)", title_justify="left")
    for col in ("mode", "% all parameters (layers)", "% ratio-defining parameters (layers)", "layers"):
        t.add_column(col, overflow="fold")
    for row in table["rows"]:
        names = row["layers"]
        shown = ", ".join(names[:4]) + (f", +{len(names) - 4} more" if len(names) > 4 else "")
        t.add_row(row["mode"], _share(row["parameters"], table["parameters"], len(names), table["layers"]),
                  _share(row["ratio_defining_parameters"], table["ratio_defining_parameters"], len(row["ratio_defining_layers"]),
                         table["ratio_defining_layers"]), shown)
    console.print(t)


def engines_table(console: Console, rows: list[dict]) -> None:
    """Who loads the checkpoint as it stands; for the others, why not and the conversion that fixes it."""
    t = Table(title="who can load this, as it stands", title_justify="left")
    for col in ("engine", "loads", "how, or why not", "fix"):
        t.add_column(col, overflow="fold")
    for row in rows:
        verdict = "[green]yes[/green]" if row["loads"] else "[dim]?[/dim]" if row["loads"] is None else "[red]no[/red]"
        fix = row["fix"]
        shown = ""
        if fix:
            shown = " ".join([f"--to {fix['to']}", *fix["flags"]]) + (" (lossless)" if fix["lossless"] else " (lossy, reported)")
            if fix["note"]:
                shown += f": {fix['note']}"
        t.add_row(row["label"], verdict, _options(row["detail"]), shown)
    console.print(t)


def convert_report(console: Console, r: ConvertReport) -> None:
    verb = "would convert" if r.dry_run else "converted"
    t = Table(title=f"woqconv {verb} {r.source} ({r.source_format}) -> {r.output} ({r.target})", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("layers", f"{r.layers_converted} quantized layers, " + ("[green]lossless[/green]" if r.lossless else "[yellow]lossy (as asked)[/yellow]"))
    for line in change_lines(r.layer_changes):
        t.add_row("", line)
    for line in r.lossy_lines():
        t.add_row("[yellow]lossy[/yellow]", line)
    if r.cast_tensors:
        t.add_row("[yellow]lossy[/yellow]", f"{len(r.cast_tensors)} unquantized tensors cast to bf16 in the Gaudi cache")
    if r.widened_tensors:
        kinds = ", ".join(sorted(set(r.widened_tensors.values())))
        why = f", {r.widened_because}" if r.widened_because else ""
        t.add_row("tensors copied", f"{r.tensors_copied} unquantized tensors; {len(r.widened_tensors)} of them ({kinds}) widened to fp32, "
                  f"exactly{why}; the rest byte for byte")
    else:
        t.add_row("tensors copied", f"{r.tensors_copied} unquantized tensors, byte for byte")
    if r.tensors_dropped:
        kinds = sorted({"." + name.rsplit(".", 1)[-1] for name in r.tensors_dropped})
        t.add_row("tensors dropped", f"{len(r.tensors_dropped)} ({', '.join(kinds)}): only the producer's own loader reads them, "
                  "and a plain model has no place for them")
    if r.base_model:
        t.add_row("base model", f"{r.base_model}: {', '.join(r.files_from_base) or 'architecture checked, no file needed'}")
    rewrote = [name for name in r.files_rewritten if name not in r.files_added]
    t.add_row("files", f"copied {len(r.files_copied)}; rewrote {', '.join(rewrote) or 'none'}"
              + (f"; added {', '.join(r.files_added)}" if r.files_added else "") + f"; dropped {', '.join(r.files_dropped) or 'none'}")
    t.add_row("bytes", f"{_size(r.bytes_in)} in" + ("" if r.dry_run else f", {_size(r.bytes_out)} out"))
    t.add_row("time", f"{r.seconds:.2f} s")
    console.print(t)
    if r.requantized:
        requant_table(console, r.requantized)
    if r.rounded:
        rounding_table(console, r.rounded)
    for w in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {_options(w)}")


def requant_table(console: Console, stats: dict[str, dict]) -> None:
    """Per layer: the weight error of the fitted integers, and of min-max rounding for comparison."""
    method = next(iter(stats.values()))["method"]
    t = Table(title=f"requantization ({method}) error per layer, against the source's dequantized weights", title_justify="left")
    t.add_column("layer", overflow="fold")
    for col in ("rel. error", "max |err|", "SNR dB", "min-max rel.", "min-max SNR"):
        t.add_column(col, justify="right", no_wrap=True)
    for name, v in stats.items():
        mm = v.get("minmax")
        t.add_row(name, f"{v['rel_fro']:.5f}", f"{v['max_abs']:.3g}", f"{v['snr_db']:.2f}",
                  f"{mm['rel_fro']:.5f}" if mm else "", f"{mm['snr_db']:.2f}" if mm else "")
    console.print(t)


def rounding_table(console: Console, stats: dict[str, dict]) -> None:
    """Per layer: what casting the fp32 dequantized weights to a 16-bit dtype changed."""
    dtype = next(iter(stats.values()))["dtype"]
    t = Table(title=f"rounding to {dtype} per layer, against the fp32 dequantized weights", title_justify="left")
    t.add_column("layer", overflow="fold")
    for col in ("weights changed", "rel. error", "max |err|"):
        t.add_column(col, justify="right", no_wrap=True)
    for name, v in stats.items():
        t.add_row(name, f"{v['values_changed']} of {v['values_total']}", f"{v['rel_fro']:.3g}", f"{v['max_abs']:.3g}")
    console.print(t)


def verify_report(console: Console, r: VerifyReport) -> None:
    from ..runtime.report import REQUANTIZED

    status = "[green]passed[/green]" if r.passed else f"[red]FAILED ({len(r.failures)} checks)[/red]"
    where = f" on {r.device} with {r.loader}" if r.device else ""
    t = Table(title=f"woqconv verify {r.path} ({r.format}){where}: {status}", title_justify="left")
    for col in ("check", "layer", "result", "detail"):
        t.add_column(col, overflow="fold")
    failed = r.failures
    shown = failed if failed else [c for c in r.checks if c.layer is None or c.check not in ("weights", REQUANTIZED)]
    for c in shown[:60]:
        t.add_row(c.check, c.layer or "", "[green]ok[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
    if not failed:
        n = sum(1 for c in r.checks if c.check == "weights")
        if n:
            t.add_row("weights", counted(n, "layer"), "[green]ok[/green]", r.weights_summary())
        n = sum(1 for c in r.checks if c.check == REQUANTIZED)
        if n:
            t.add_row(REQUANTIZED, counted(n, "layer"), "[green]ok[/green]", "each within the weight-error limit (per layer in --format json)")
    console.print(t)
    if r.reference:
        console.print(f"reference: {r.reference}; {r.seconds:.2f} s")


def push_report(console: Console, r: PushReport) -> None:
    where = f"a pull request on {r.repo_id}" if r.create_pr else f"{r.repo_id}" + (f" (branch {r.revision})" if r.revision else "")
    verb = "would upload" if r.dry_run else "uploaded"
    t = Table(title=f"woqconv {verb} to {where}" + (" (private)" if r.private else ""), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("files", ", ".join(r.files))
    if not r.dry_run:
        t.add_row("bytes", _size(r.bytes))
        t.add_row("commit", r.commit or "")
        t.add_row("url", r.pr_url or r.commit_url or "")
    console.print(t)
    if r.dry_run:
        console.print("model card (README.md):")
        console.file.write(r.card)  # verbatim: rich would wrap the card's lines
        console.file.flush()


_STATUS_STYLE = {"succeeded": "green", "refused": "yellow", "failed": "red"}


def migration_line(e: MigrationEntry) -> str:
    style = _STATUS_STYLE[e.status]
    tail = " (finished by an earlier run)" if e.done_earlier else (f": {_options(e.reason)}" if e.reason else "")
    return f"[{style}]{e.status}[/{style}] {e.key}{tail}"


def migration_report(console: Console, r: MigrationReport) -> None:
    counts = r.counts()
    t = Table(title=f"woqconv migrate -> {r.target} in {r.root}: " + ", ".join(f"{n} {k}" for k, n in counts.items()), title_justify="left")
    for col in ("repo", "status", "output / why", "verify", "pushed to"):
        t.add_column(col, overflow="fold")
    for e in r.entries:
        style = _STATUS_STYLE[e.status]
        status = f"[{style}]{e.status}[/{style}]" + (" (earlier run)" if e.done_earlier else "")
        verify = "" if e.verified is None else "passed" if e.verified else "FAILED"
        t.add_row(e.key, status, _options(e.reason) if e.status != "succeeded" else (e.output or ""), verify, e.push_url or e.pushed_to or "")
    console.print(t)
