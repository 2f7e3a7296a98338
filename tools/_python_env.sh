# Which Python the launch wrappers (dist_train.sh, dist_test.sh, slurm_train.sh) run; sourced by
# them, not run. In this order:
#   1. $PYTHON, when set;
#   2. the activated virtualenv ($VIRTUAL_ENV/bin/python);
#   3. $COTAP_VENV/bin/python, else the repository's .venv/bin/python (what `make setup` creates);
#   4. python3 / python on PATH, if it imports torch and cotap_mm (e.g. an activated conda env);
# otherwise one line on stderr saying how to set one up, and exit status 2.
# The choice is printed in one line on stderr.

# cotap_pick_python REPO_ROOT: sets PYTHON (an absolute path or a command on PATH)
cotap_pick_python() {
    local root=$1 venv from
    venv=${COTAP_VENV:-$root/.venv}
    if [ -n "${PYTHON:-}" ]; then
        from='$PYTHON'
    elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        PYTHON=$VIRTUAL_ENV/bin/python
        from='the activated virtualenv'
    elif [ -x "$venv/bin/python" ]; then
        PYTHON=$venv/bin/python
        from=${COTAP_VENV:+'$COTAP_VENV'}
        from=${from:-"the repository's .venv"}
    else
        local cand
        for cand in python3 python; do
            if command -v "$cand" >/dev/null 2>&1 \
                    && "$cand" -c 'import torch, cotap_mm' >/dev/null 2>&1; then
                PYTHON=$(command -v "$cand")
                from="$cand on PATH (has torch and cotap_mm)"
                break
            fi
        done
        if [ -z "${PYTHON:-}" ]; then
            echo "$(basename "$0"): no Python environment with cotap_mm: run \`make setup\` in $root" \
                 "(creates $venv) or activate yours (\`source .venv/bin/activate\`), or set" \
                 "PYTHON=/path/to/python" >&2
            exit 2
        fi
    fi
    echo "$(basename "$0"): python $PYTHON ($from)" >&2
}
