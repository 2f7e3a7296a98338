#!/usr/bin/env bash
# Train an mmseg benchmark config from configs/benchmarks/mmseg/ on a CoTAP checkpoint with torchrun.
#   tools/benchmarks/mmseg/train.sh CONFIG GPUS PRETRAIN [tools/train.py args...]
# PRETRAIN: a checkpoint with `backbone.*` keys (e.g. a CoTAP run's iter_*.pth or a published one);
# it is passed as --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN (more --cfg-options can
# follow). Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT as in tools/dist_train.sh. Works on GPUs
# (nccl) and on CPU-only machines (gloo; configs with SyncBN then need GPUS=1).
# (openmim's mim_dist_train.sh cannot be used: openmim imports pkg_resources.)
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG GPUS PRETRAIN [tools/train.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
PRETRAIN=$3
if [ ! -f "$CONFIG" ]; then
    echo "$0: config '$CONFIG' not found" >&2
    exit 2
fi
if [ ! -f "$PRETRAIN" ]; then
    echo "$0: pretrain checkpoint '$PRETRAIN' not found" >&2
    exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DIR/../../.." && pwd)"
PYTHON=${PYTHON:-python}

PYTHONPATH="$ROOT":${PYTHONPATH:-} \
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch \
    --cfg-options model.backbone.init_cfg.checkpoint="$PRETRAIN" \
    "${@:4}"
