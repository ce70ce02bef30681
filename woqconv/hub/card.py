"""The README model card pushed with a converted checkpoint: what was done, how to load it, how to redo it.

A pure function of the facts (reports as their ``to_dict()`` JSON), so the same facts give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import TARGETS

# The files whose presence makes AutoTokenizer.from_pretrained work.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
from ..wording import change_lines, counted, lossy_lines

@dataclass
class CardFacts:
    repo_id: str  # where the card is pushed
    source: str  # a Hub repo id, or a local path
    source_commit: str | None  # the commit sha converted, for a Hub source
    convert: dict  # ConvertReport.to_dict()
    verify: dict | None  # VerifyReport.to_dict(), when verify ran
    version: str  # woqconv's
    command: str  # the exact command line


def _source_link(f: CardFacts) -> str:
    if f.source_commit:
        return f"[{f.source}](/{f.source}) at commit `{f.source_commit}`"
    return f"`{f.source}` (a local checkpoint)"


def _conversion_section(c: dict) -> list[str]:
    lines = ["## Conversion", ""]
    requantized = c.get("requantized") or {}
    rounded = c.get("rounded") or {}
    if c["lossless"] and getattr(TARGETS.get(c["target"]), "dtype_option", False):
        lines.append(f"Lossless: every one of the {c['layers_converted']} quantized layers is written as the source's dequantized weights, "
                     "bit for bit (float32).")
    elif c["lossless"]:
        lines.append(f"Lossless: every one of the {c['layers_converted']} quantized layers carries the source's codes, zero points and scales bit for bit.")
    elif rounded:
        lines.append(f"Lossy, as asked with `--dtype {next(iter(rounded.values()))['dtype']}`: the source's dequantized weights, rounded "
                     f"(in {len(rounded)} of {c['layers_converted']} layers).")
    elif requantized:
        lines.append(f"Lossy, as asked with `--requantize`: {len(requantized)} of {c['layers_converted']} quantized layers were "
                     "refitted (new integers); the error of each, against the source's dequantized weights, is below.")
    else:
        lines.append(f"Lossy, as accepted: {c['layers_converted']} quantized layers; codes and zero points are exact.")
    lines += [f"- {line}" for line in change_lines(c["layer_changes"])]
    lines += [f"- {line}" for line in lossy_lines(c["lossy_layers"], requantized, rounded)]
    if requantized:
        lines += ["", "| layer | method | relative Frobenius error | max abs error | SNR (dB) | min-max rounding: rel. error |",
                  "|---|---|---|---|---|---|"]
        for name, v in requantized.items():
            mm = v.get("minmax", {}).get("rel_fro")
            lines.append(f"| {name} | {v['method']} | {v['rel_fro']:.5f} | {v['max_abs']:.3g} | {v['snr_db']:.2f} | "
                         + (f"{mm:.5f} |" if mm is not None else "|"))
        lines.append("")
    if c["cast_tensors"]:
        lines.append(f"- {len(c['cast_tensors'])} unquantized tensors cast to bf16 in the Gaudi cache")
    lines.append(f"- {c['tensors_copied']} unquantized tensors copied byte for byte")
    added = c.get("files_added", [])
    rewritten = [name for name in c["files_rewritten"] if name not in added]
    if rewritten:
        lines.append(f"- rewritten: {', '.join(rewritten)}")
    if added:
        lines.append(f"- added: {', '.join(added)}")
    if c["files_dropped"]:
        lines.append(f"- dropped: {', '.join(c['files_dropped'])}")
    for w in c["warnings"]:
        lines.append(f"- warning: {w}")
    return lines


def _verify_section(v: dict | None) -> list[str]:
    lines = ["## Verification", ""]
    if v is None:
        return lines + ["Not run at conversion time. Run `woqconv verify` on a download to check it."]
    where = f" on {v['device']} with {v['loader']}" if v.get("device") else ""
    lines.append(f"`woqconv verify`{where}: **{'passed' if v['passed'] else 'FAILED'}**.")
    if v.get("reference"):
        lines.append(f"Reference: {v['reference']}.")
    lines += ["", "| check | layer | result | detail |", "|---|---|---|---|"]
    weights = [c for c in v["checks"] if c["check"] == "weights"]
    for c in v["checks"]:
        if c["check"] == "weights" and c["passed"]:
            continue
        detail = str(c.get("detail", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['check']} | {c.get('layer') or ''} | {'ok' if c['passed'] else 'FAIL'} | {detail} |")
    if weights and all(c["passed"] for c in weights):
        lines.append(f"| weights | {counted(len(weights), 'layer')} | ok | {v.get('weights_summary')} |")
    return lines


def _load_section(f: CardFacts) -> list[str]:
    """Each way the target's own module says its outputs load, with this repo's id filled in."""
    target = TARGETS.get(f.convert["target"])
    files = [*f.convert.get("files_copied", []), *f.convert.get("files_from_base", [])]
    tokenizer = any(name.startswith(TOKENIZER_FILES) for name in files)
    fill = {"{tokenizer_import}": ", AutoTokenizer" if tokenizer else "",
            "{tokenizer_import_line}": "\nfrom transformers import AutoTokenizer" if tokenizer else "",
            "{tokenizer}": '\ntokenizer = AutoTokenizer.from_pretrained("{repo}")' if tokenizer else "", "{repo}": f.repo_id}
    lines = ["## How to load", ""]
    for example in target.load_examples if target else ():
        code = example.code
        for key, value in fill.items():  # in this order: the tokenizer line holds {repo} too
            code = code.replace(key, value)
        lines += [example.intro, "", "```python", *code.splitlines(), "```", ""]
    return lines


def render_card(f: CardFacts) -> str:
    c = f.convert
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- woqconv",
        f"- {c['target']}",
        "---",
        "",
        f"# {f.repo_id.split('/')[-1]}",
        "",
        f"{c['target']} checkpoint converted from {_source_link(f)} by woqconv {f.version}.",
        "",
        "| | format |",
        "|---|---|",
        f"| source | {c['source_format']} |",
        f"| this repo | {c['target']} |",
        "",
        *_conversion_section(c),
        "",
        *_verify_section(f.verify),
        "",
        *_load_section(f),
        "## Reproduce",
        "",
        "The command that made this repo" + (f" (the source was at commit `{f.source_commit}`; `--revision {f.source_commit}` pins it):" if f.source_commit else ":"),
        "",
        "```",
        f.command,
        "```",
        "",
    ]
    return "\n".join(lines)
