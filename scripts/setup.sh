#!/usr/bin/env bash
# Create .venv and install the toolkit. `bash scripts/setup.sh dev` adds the test tools.
# torch comes first and pinned, so a CPU-only machine takes its CPU build instead of gigabytes of
# CUDA wheels; on a GPU machine set TORCH_SPEC=torch (or your CUDA build) and add the kernels:
#   TORCH_SPEC=torch bash scripts/setup.sh gpu
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
echo "installed: $(.venv/bin/python -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)')"
