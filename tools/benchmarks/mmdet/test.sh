#!/usr/bin/env bash
# Evaluate a fine-tuned detector (COCO bbox + segm AP with mmdet's CocoMetric) with torchrun.
#
#   tools/benchmarks/mmdet/test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
#
# CHECKPOINT is the fine-tuned detector (e.g. work_dirs/benchmarks/mmdet/<config>/<pretrain>/epoch_12.pth).
# The backbone's Pretrained init is not run at test time (the runner loads CHECKPOINT), so no
# PRETRAIN is needed. Add `--out metrics.json` to write the metrics.
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch \
    "${@:4}"
