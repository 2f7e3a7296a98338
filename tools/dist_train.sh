#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 tools/dist_train.sh CONFIG GPUS
# Works with GPUs (nccl, one process per GPU) and on CPU-only machines (gloo, GPUS processes).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}

PYTHONPATH="$DIR/..":${PYTHONPATH:-} \
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$DIR/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
