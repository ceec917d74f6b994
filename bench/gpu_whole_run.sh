#!/usr/bin/env bash
# Whole runs on one GPU (issue 14): embed_nb's train() against sentence-transformers' trainer, one epoch of InsuranceQA
# pairs each, model saved, at the MiniLM-L6 and BERT-base shapes (random-init weights from a config with the
# all-MiniLM-L6-v2 tokenizer: the compute of the real models, no download), bf16, batch 128, max length 256, tokenizer
# threads as the environment has them; also embed_nb with compile: true; model-FLOPs utilisation printed. Offline: --tokenizer DIR (a BERT tokenizer folder) and --pairs FILE.jsonl.
#   bench/gpu_whole_run.sh --tokenizer .whl/tok --pairs .whl/pairs16k.jsonl [--rounds 2]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOK=""; PAIRS=""; ROUNDS=2
while [ $# -gt 0 ]; do case "$1" in --tokenizer) TOK=$2; shift 2;; --pairs) PAIRS=$2; shift 2;; --rounds) ROUNDS=$2; shift 2;; *) break;; esac; done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
MODELS=$(mktemp -d)
"$PY" - "$MODELS" "$TOK" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
from common import random_bert
for name, (hidden, layers) in {"minilm": (384, 6), "bert-base": (768, 12)}.items():
    print(name, random_bert(f"{sys.argv[1]}/{name}", hidden, layers, 12, sys.argv[2] or None))
PYEOF
mkdir -p bench/results
for shape in minilm bert-base; do
  "$PY" bench/throughput.py --device cuda --bf16 --whole-run --batch-size 128 --max-examples 16384 --warmup 10 --steps 40 \
      --rounds "$ROUNDS" --contenders embed_nb,sentence_transformers,embed_nb_compile --tokenizer-threads default --model "$MODELS/$shape/st" \
      ${PAIRS:+--pairs "$PAIRS"} --name "whole_run_gpu_$shape" "$@"
done
