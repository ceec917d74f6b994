#!/usr/bin/env bash
# The GPU check of issue 10: every entry point x strategy x precision at world size 1 and a ~0.5B decoder with LoRA,
# on one GPU, offline; prints one table and writes tools/checks/results/gpu_check.json. CI never runs it.
#   tools/checks/gpu_check.sh            # needs a CUDA torch, embed_nb[dev] (deepspeed, peft) installed: no network used
#   tools/checks/gpu_check.sh --cpu      # the CPU-capable subset with small shapes (checks the script, not the GPU paths)
#   tools/checks/gpu_check.sh --jobs 8 --logs DIR   # 8 runs at a time on the one GPU (each its own ports); each run's output kept
# PYTHON picks the interpreter (default python3; from a checkout set up by make: PYTHON=.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
suffix=""
for arg in "$@"; do if [ "$arg" = "--cpu" ]; then suffix=_cpu; fi; done
if [ -z "$suffix" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
fi
mkdir -p tools/checks/results
exec "$PY" tools/checks/gpu_check.py --out "tools/checks/results/gpu_check${suffix}.json" "$@"
