# Argument handling shared by the benchmark wrappers tools/benchmarks/{mmseg,mmdet}/*.sh: sourced by
# them, not run. The launch itself is tools/dist_train.sh / tools/dist_test.sh (torchrun; NNODES,
# NODE_RANK, MASTER_ADDR, PORT as documented there; the Python is $PYTHON, else the activated venv,
# else $COTAP_VENV or the repository's .venv, see tools/_python_env.sh; nccl with GPUs, gloo and
# GPUS CPU processes on a machine without CUDA). Bad arguments exit with status 2 and a message on stderr.
# (openmim's mim_dist_train.sh cannot be used: openmim imports pkg_resources.)
set -euo pipefail
BENCH_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# bench_train WORK_DIR_ROOT CONFIG GPUS PRETRAIN [tools/train.py args...]
# Checks that CONFIG and PRETRAIN are files, then runs tools/dist_train.sh CONFIG GPUS with
# --cfg-options model.backbone.init_cfg.checkpoint=PRETRAIN (more --cfg-options can follow).
# A non-empty WORK_DIR_ROOT also passes --work-dir $WORK_DIR, by default
# WORK_DIR_ROOT/<config name>/<pretrain file name> (a later --work-dir wins); an empty one keeps
# tools/train.py's default (work_dirs/<config name>).
bench_train() {
    local work_root=$1
    shift
    if [ $# -lt 3 ]; then
        echo "usage: $0 CONFIG GPUS PRETRAIN [tools/train.py args...]" >&2
        exit 2
    fi
    local config=$1 gpus=$2 pretrain=$3
    shift 3
    if [ ! -f "$config" ]; then
        echo "$0: config '$config' not found" >&2
        exit 2
    fi
    if [ ! -f "$pretrain" ]; then
        echo "$0: PRETRAIN checkpoint '$pretrain' not found (the file does not exist)" >&2
        exit 2
    fi
    local work_dir=()
    if [ -n "$work_root" ]; then
        local default_dir
        default_dir="$work_root/$(basename "${config%.*}")/$(basename "${pretrain%.*}")"
        work_dir=(--work-dir "${WORK_DIR:-$default_dir}")
    fi
    exec "$BENCH_TOOLS_DIR/dist_train.sh" "$config" "$gpus" "${work_dir[@]}" \
        --cfg-options model.backbone.init_cfg.checkpoint="$pretrain" "$@"
}

# bench_test CONFIG CHECKPOINT GPUS [tools/test.py args...]
# Runs tools/dist_test.sh with the same arguments (the runner loads CHECKPOINT, which holds every
# weight, so no PRETRAIN is needed).
bench_test() {
    if [ $# -lt 3 ]; then
        echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py args...]" >&2
        exit 2
    fi
    exec "$BENCH_TOOLS_DIR/dist_test.sh" "$@"
}
