#!/usr/bin/env bash
# Fine-tune a pre-trained backbone on COCO with an mmdet config (torchrun through tools/dist_train.sh).
#
#   tools/benchmarks/mmdet/train.sh CONFIG GPUS PRETRAIN [tools/train.py args...]
#
# PRETRAIN: a checkpoint whose backbone weights are stored under `backbone.*` (cotap_mm training
# checkpoints, tools/model_converters/vit2cotap.py output); it is passed as
# --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN. The work dir defaults to
# work_dirs/benchmarks/mmdet/<config name>/<pretrain file name> (or $WORK_DIR); a later --work-dir wins.
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 (as tools/dist_train.sh); see
# ../_launch_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_common.sh"
bench_train work_dirs/benchmarks/mmdet "$@"
