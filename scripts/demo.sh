#!/usr/bin/env bash
# The main job on a bundled tiny checkpoint: a GPTQ checkpoint written by AutoRound becomes a
# Gaudi-ready INC checkpoint for each of INC's two Gaudi routes, is inspected, and is loaded through
# INC's own HPU path (real on a Gaudi host, emulated on CPU elsewhere) without INC repacking a layer:
#   hpu-default  the Gaudi recipe's call, load(OUT, format="default", device="hpu",
#                original_model=AutoModelForCausalLM.from_pretrained(BASE)), reading quantized_hpu_weight.pt;
#   hpu          load(OUT, format="huggingface", device="hpu"), reading hpu_model.safetensors.
# Gaudi computes with bf16 scales, so both targets cast the fp16 scales (--allow-bf16 accepts that,
# and the conversion reports it per layer); codes and zero points stay exact.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-out}
BIN=.venv/bin
BASE=fixtures/base-fp16  # the original fp16 model the checkpoint was quantized from
mkdir -p "$OUT"
$BIN/woqconv convert fixtures/ar-g128-asym-auto_gptq -o "$OUT/hpu-default" --to hpu-default --allow-bf16 --overwrite
$BIN/woqconv inspect "$OUT/hpu-default"
$BIN/python -m woqconv.runtime.inc_hpu "$OUT/hpu-default" --base-model "$BASE"
$BIN/woqconv convert fixtures/ar-g128-asym-auto_gptq -o "$OUT/hpu" --to hpu --allow-bf16 --overwrite
$BIN/python -m woqconv.runtime.inc_hpu "$OUT/hpu"
