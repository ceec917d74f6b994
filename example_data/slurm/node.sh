#!/usr/bin/env bash
# One node's part of a multi-node run: a torchrun that starts a process per GPU of this node and joins the others.
# Under SLURM, `srun` starts it once on every node (train.sbatch); SLURM sets SLURM_NNODES, SLURM_NODEID and
# SLURM_JOB_NODELIST. Elsewhere, set them yourself (and MASTER_ADDR: the address of the node with SLURM_NODEID 0).
# Every node must see the config, the data and the output_dir at the same paths (a shared filesystem).
set -euo pipefail
CONFIG=${1:?usage: node.sh CONFIG.yaml [--set KEY=VALUE ...]}
shift
: "${MASTER_ADDR:=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
# resume_from_checkpoint=auto: a requeued or restarted job goes on from its newest checkpoint (a fresh one starts afresh)
exec torchrun --nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "${GPUS_PER_NODE:-gpu}" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  -m embed_nb.train --config "$CONFIG" --set resume_from_checkpoint=auto "$@"
