#!/usr/bin/env bash
# The main job on a bundled tiny checkpoint: a GPTQ checkpoint written by AutoRound becomes a
# Gaudi-ready INC checkpoint (hpu), is inspected, and is loaded through INC's own HPU path
# (real on a Gaudi host, emulated on CPU elsewhere) without INC repacking a single layer.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-out}
BIN=.venv/bin
$BIN/woqconv convert fixtures/ar-g128-asym-auto_gptq -o "$OUT" --to hpu --allow-bf16 --overwrite
$BIN/woqconv inspect "$OUT"
$BIN/python -m woqconv.runtime.inc_hpu "$OUT"
