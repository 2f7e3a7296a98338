#!/usr/bin/env bash
# Frozen linear probe: tools/benchmarks/mmseg/linear_probe.sh CONFIG GPUS PRETRAIN [train.py args...]
# CONFIG: one of configs/benchmarks/mmseg/linear_*.py (or a config inheriting one). Their batch size
# is the protocol's total batch on 1 GPU: with N GPUs add
#   --cfg-options train_dataloader.batch_size=$((B / N))
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$DIR/train.sh" "$@"
