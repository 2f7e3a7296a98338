#!/usr/bin/env bash
# Evaluate a fine-tuned detector (COCO bbox + segm AP with mmdet's CocoMetric) with torchrun.
#
#   tools/benchmarks/mmdet/test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
#
# CHECKPOINT is the fine-tuned detector (e.g. work_dirs/benchmarks/mmdet/<config>/<pretrain>/epoch_12.pth).
# The backbone's Pretrained init is not run at test time (the runner loads CHECKPOINT), so no
# PRETRAIN is needed. Add `--out metrics.json` to write the metrics. Launch as tools/dist_test.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_common.sh"
bench_test "$@"
