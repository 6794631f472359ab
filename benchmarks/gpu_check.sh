#!/usr/bin/env bash
# GPU check, one GPU, unattended, under 10 minutes: LoRA r64 and r256 on a random-init Qwen3.5-0.8B-shaped
# model at seq 2048 through the toolkit's training loop; tokens/s, MFU, peak memory next to `toolkit estimate`,
# and an assertion that the Gated DeltaNet layers run the flash-linear-attention / causal-conv1d kernels.
#
#   bash benchmarks/gpu_check.sh                        # defaults: seq 2048, micro-batch 4, 12 steps per rank
#   bash benchmarks/gpu_check.sh --batch 8 --steps 20   # any option of benchmarks/gpu_check.py
#
# 1. without .venv, builds it with the CUDA torch and the kernels (TORCH_SPEC=torch bash scripts/setup.sh gpu);
#    with .venv, installs the kernels into it if they are missing (the `gpu` extra: needs PyPI, and
#    causal-conv1d may compile against the local CUDA toolkit);
# 2. runs benchmarks/gpu_check.py, which exits non-zero if the fast kernels are not the ones used.
# The markdown table is printed and written to runs/gpu-check/gpu_check.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=.venv/bin/python

if [ ! -x "$PYTHON" ]; then
  TORCH_SPEC=${TORCH_SPEC:-torch} bash scripts/setup.sh gpu
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: .venv's torch sees no CUDA device (a CPU build?): rebuild it with" \
       "TORCH_SPEC=torch bash scripts/setup.sh gpu" >&2
  exit 1
fi
if ! "$PYTHON" -c "import fla, causal_conv1d" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet -e ".[gpu]"
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
export TOKENIZERS_PARALLELISM=false
exec timeout 540 "$PYTHON" benchmarks/gpu_check.py "$@"
