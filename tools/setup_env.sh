#!/usr/bin/env bash
# Idempotent environment set-up for cotap_mm.
#
# Creates a virtualenv (default: ./.venv, override with COTAP_VENV) holding
#   torch 2.14.1 / torchvision 0.29.1, mmengine 0.10.7, mmcv 2.1.0 (with compiled ops),
#   mmpretrain 1.2.0, mmsegmentation 1.2.2, mmdet 3.3.0, and cotap_mm itself (editable).
# mmcv is taken from a wheel cache when one matches (COTAP_WHEEL_DIRS, default
# ../shared/wheels and ./.wheelcache); otherwise it is built from source with the C++20 fix
# and the built wheel is stored in ./.wheelcache.
# A stamp file records a hash of this script and setup.py: re-running is a no-op when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COTAP_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
CACHE="$ROOT/.wheelcache"
WHEEL_DIRS="${COTAP_WHEEL_DIRS:-$ROOT/../shared/wheels:$CACHE}"
STAMP="$VENV/.cotap_mm_setup"
HASH="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.py" "$ROOT/requirements/"*.txt | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi

log() { echo "[setup_env] $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing build tools and torch"
"${PIP[@]}" install -q "setuptools<81" wheel ninja
"${PIP[@]}" install -q -r "$ROOT/requirements/torch.txt"
# torch may pull a newer setuptools; mmcv's build and mmengine's cross-package configs need pkg_resources.
"${PIP[@]}" install -q "setuptools<81"

find_links=()
IFS=':' read -r -a dirs <<< "$WHEEL_DIRS"
for d in "${dirs[@]}"; do
  [[ -d "$d" ]] && find_links+=(--find-links "$d")
done

# mmcv's runtime dependencies first: importing mmcv (to check its compiled ops) needs mmengine
"${PIP[@]}" install -q -r "$ROOT/requirements/mmcv_runtime.txt"
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  if "${PIP[@]}" install -q --no-index --no-deps "${find_links[@]}" "mmcv==2.1.0" 2>/dev/null \
      && "$PY" -c "import mmcv._ext" 2>/dev/null; then
    log "mmcv 2.1.0 installed from the wheel cache (${WHEEL_DIRS})"
  else
    log "no usable mmcv 2.1.0 wheel in the cache: building from source (15-30 min on 2 cores)"
    "${PIP[@]}" uninstall -y -q mmcv 2>/dev/null || true
    "${PIP[@]}" install -q -r "$ROOT/requirements/mmcv_build.txt"
    wrapper="$(mktemp -d)/cxx20"
    cat > "$wrapper" <<'WRAP'
#!/usr/bin/env bash
args=()
for a in "$@"; do [[ "$a" == "-std=c++17" ]] && a="-std=c++20"; args+=("$a"); done
exec g++ "${args[@]}"
WRAP
    chmod +x "$wrapper"
    mkdir -p "$CACHE"
    CXX="$wrapper" MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
      "${PIP[@]}" wheel --no-deps --no-build-isolation --no-cache-dir -w "$CACHE" "mmcv==2.1.0"
    "${PIP[@]}" install -q --no-index --no-deps --find-links "$CACHE" "mmcv==2.1.0"
  fi
  "$PY" -c "import mmcv._ext" || { log "mmcv was installed but its compiled ops do not import"; exit 1; }
fi

log "installing the OpenMMLab stack and cotap_mm"
"${PIP[@]}" install -q -e "$ROOT[tests]"
"$PY" - <<'PY'
import mmcv.ops, mmpretrain.models, mmseg.models, mmdet.models  # noqa: F401
import cotap_mm  # noqa: F401
PY
echo "$HASH" > "$STAMP"
log "ready: $VENV"
