#!/usr/bin/env bash
# The main job on a bundled tiny checkpoint (set up with `bash scripts/setup.sh main-job`): a GPTQ
# checkpoint written by AutoRound becomes
#   1. an INC checkpoint (`--to inc`): lossless, every integer and scale as the source;
#   2. a Gaudi-ready INC checkpoint for each of INC's two Gaudi routes, loaded through INC's own HPU
#      path (real on a Gaudi host, emulated on CPU elsewhere) without INC repacking a layer:
#        hpu-default  the Gaudi recipe's call, load(OUT, format="default", device="hpu",
#                     original_model=AutoModelForCausalLM.from_pretrained(BASE)), reading quantized_hpu_weight.pt;
#        hpu          load(OUT, format="huggingface", device="hpu"), reading hpu_model.safetensors.
#      Gaudi computes with bf16 scales, so these two cast the fp16 scales: lossy, and only because
#      --allow-bf16 accepts it. Codes and zero points stay exact; every report says how many scales changed.
# Each output is verified: read back, compared with the source, and run by its real loader.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-out}
BIN=.venv/bin
SRC=fixtures/ar-g128-asym-auto_gptq
BASE=fixtures/base-fp16  # the original fp16 model the checkpoint was quantized from
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1. lossless: GPTQ -> INC's default format, then verify (run in INC, against woqconv's dequantization)"
$BIN/woqconv convert "$SRC" -o "$OUT/inc" --to inc --overwrite
$BIN/woqconv verify "$OUT/inc" -q

step "2. Gaudi, INC's default route: hpu-default (bf16 scales, accepted with --allow-bf16)"
$BIN/woqconv convert "$SRC" -o "$OUT/hpu-default" --to hpu-default --allow-bf16 --overwrite
$BIN/woqconv inspect "$OUT/hpu-default"
$BIN/woqconv verify "$OUT/hpu-default" --against "$SRC" --no-run -q   # the weights against the source: the accepted cast, counted
$BIN/woqconv verify "$OUT/hpu-default" -q                             # a real run on INC's Gaudi path
$BIN/python -m woqconv.runtime.inc_hpu "$OUT/hpu-default" --base-model "$BASE"

step "3. Gaudi, INC's huggingface route: hpu"
$BIN/woqconv convert "$SRC" -o "$OUT/hpu" --to hpu --allow-bf16 --overwrite
$BIN/python -m woqconv.runtime.inc_hpu "$OUT/hpu"
