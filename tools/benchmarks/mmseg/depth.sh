#!/usr/bin/env bash
# NYUv2 depth: tools/benchmarks/mmseg/depth.sh CONFIG GPUS PRETRAIN [train.py args...]
# CONFIG: configs/benchmarks/mmseg/depth_*.py (4 GPUs x 8 images; on CPU-only machines, GPUS=1
# because of the neck's SyncBN).
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$DIR/train.sh" "$@"
