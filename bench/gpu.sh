#!/usr/bin/env bash
# Training throughput on one GPU in bf16: embed_nb against sentence-transformers' trainer (and embed_nb with padding to
# max length, and without length grouping), alternating in one invocation; writes bench/results/throughput_gpu.json.
#
#   bench/gpu.sh                                   # InsuranceQA (installed by the script), the embedded model
#   bench/gpu.sh --model DIR --pairs FILE.jsonl    # an offline machine: a model folder and {query, pos} pairs carried in
#
# Environment: PYTHON (default python3), BATCH (128), STEPS (40 timed), WARMUP (10), ROUNDS (3). Extra arguments go to
# bench/throughput.py. Needs a CUDA build of torch and embed_nb's requirements (settings.ini) plus bench/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
"$PY" bench/throughput.py --device cuda --bf16 --batch-size "${BATCH:-128}" --steps "${STEPS:-40}" --warmup "${WARMUP:-10}" \
    --rounds "${ROUNDS:-3}" --contenders embed_nb,sentence_transformers,embed_nb_nogroup,embed_nb_maxpad --name throughput_gpu "$@"
