#!/usr/bin/env bash
# Train an mmseg benchmark config from configs/benchmarks/mmseg/ on a CoTAP checkpoint with torchrun.
#   tools/benchmarks/mmseg/train.sh CONFIG GPUS PRETRAIN [tools/train.py args...]
# PRETRAIN: a checkpoint with `backbone.*` keys (e.g. a CoTAP run's iter_*.pth or a published one);
# it is passed as --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN (more --cfg-options can
# follow). The work dir is tools/train.py's default (work_dirs/<config name>) unless --work-dir is
# given. Launch, multi-node (NNODES, NODE_RANK, MASTER_ADDR, PORT) and CPU use as tools/dist_train.sh
# (CPU-only machines: gloo; configs with SyncBN then need GPUS=1); see ../_launch_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_common.sh"
bench_train '' "$@"
