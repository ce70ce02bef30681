"""The README model card pushed with a converted checkpoint: what was done, how to load it, how to redo it.

A pure function of the facts (reports as their ``to_dict()`` JSON), so the same facts give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wording import change_lines, counted, lossy_lines

# Targets read by INC (neural-compressor), and how; the others load in transformers (+ gptqmodel).
_INC_LOAD = {
    "hpu": 'model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  # Gaudi: uses hpu_model.safetensors, no repack',
    "inc-hf": 'model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  # or device="cpu"',
    "gptq": 'model = load(path, format="huggingface", device="hpu", torch_dtype=torch.bfloat16)  # INC repacks GPTQ at load; a woqconv --to hpu checkpoint skips that',
    "inc": 'original_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))\n'
           'model = load(path, format="default", original_model=original_model, device="cpu")',
    "hpu-default": 'original_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))\n'
                   'model = load(model_name_or_path=path, format="default", device="hpu", original_model=original_model)'
                   '  # Gaudi: uses quantized_hpu_weight.pt, no repack',
}
_TRANSFORMERS_TARGETS = ("gptq", "gptq-v2", "awq", "inc-hf", "hpu")


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
    if c["lossless"]:
        lines.append(f"Lossless: every one of the {c['layers_converted']} quantized layers carries the source's codes, zero points and scales bit for bit.")
    elif requantized:
        lines.append(f"Lossy, as asked with `--requantize`: {len(requantized)} of {c['layers_converted']} quantized layers were "
                     "refitted (new integers); the error of each, against the source's dequantized weights, is below.")
    else:
        lines.append(f"Lossy, as accepted: {c['layers_converted']} quantized layers; codes and zero points are exact.")
    lines += [f"- {line}" for line in change_lines(c["layer_changes"])]
    lines += [f"- {line}" for line in lossy_lines(c["lossy_layers"], requantized)]
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
    if c["files_rewritten"]:
        lines.append(f"- rewritten: {', '.join(c['files_rewritten'])}")
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
        lines.append(f"| weights | {counted(len(weights), 'layer')} | ok | every layer as the source |")
    return lines


def _load_section(f: CardFacts) -> list[str]:
    target = f.convert["target"]
    lines = ["## How to load", ""]
    if target in _INC_LOAD:
        lines += [
            "With Intel Neural Compressor" + (" on Gaudi:" if target != "inc" else ":"),
            "",
            "```python",
            "import torch",
            "from huggingface_hub import snapshot_download",
            "from neural_compressor.torch.quantization import load",
            *(["from transformers import AutoConfig, AutoModelForCausalLM"] if target in ("inc", "hpu-default") else []),
            "",
            f'path = snapshot_download("{f.repo_id}")',
            _INC_LOAD[target],
            "```",
            "",
        ]
    if target in _TRANSFORMERS_TARGETS:
        lines += [
            "With transformers (the gptqmodel backend on CPU/CUDA):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{f.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{f.repo_id}")',
            "```",
            "",
        ]
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
