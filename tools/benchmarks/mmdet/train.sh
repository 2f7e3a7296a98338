#!/usr/bin/env bash
# Fine-tune a pre-trained backbone on COCO with an mmdet config (torchrun; mmpretrain's
# mim_dist_train.sh cannot be used: openmim imports pkg_resources).
#
#   tools/benchmarks/mmdet/train.sh CONFIG GPUS PRETRAIN [tools/train.py args...]
#
# PRETRAIN: a checkpoint whose backbone weights are stored under `backbone.*` (cotap_mm training
# checkpoints, tools/model_converters/vit2cotap.py output); it is passed as
# --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN. The work dir defaults to
# work_dirs/benchmarks/mmdet/<config name>/<pretrain file name>; a later --work-dir wins.
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 (as tools/dist_train.sh).
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG GPUS PRETRAIN [tools/train.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
PRETRAIN=$3
if [ ! -f "$PRETRAIN" ]; then
    echo "$0: PRETRAIN checkpoint '$PRETRAIN' does not exist" >&2
    exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DIR/../../.." && pwd)"
PYTHON=${PYTHON:-python}
CFG_NAME=$(basename "${CONFIG%.*}")
PRETRAIN_NAME=$(basename "${PRETRAIN%.*}")
WORK_DIR=${WORK_DIR:-"work_dirs/benchmarks/mmdet/$CFG_NAME/$PRETRAIN_NAME"}

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
    --work-dir "$WORK_DIR" \
    --cfg-options model.backbone.init_cfg.checkpoint="$PRETRAIN" \
    "${@:4}"
