#!/usr/bin/env bash
# Evaluate a trained benchmark model: tools/benchmarks/mmseg/test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# (the fine-tuned checkpoint holds every weight, so no PRETRAIN is needed). Launch as tools/dist_test.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_common.sh"
bench_test "$@"
