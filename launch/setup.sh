#!/usr/bin/env bash
# Installs everything condensa needs to build and test on Debian 12, idempotently:
# a fast no-op when everything is already present.
#   1. Debian packages (compiler, CMake, Open MPI, yaml-cpp, nlohmann-json, GoogleTest, and
#      Chromium: the report test renders `condensa report`'s page in headless Chromium).
#   2. LibTorch 2.11 into the project-local prefix .deps/libtorch (git-ignored), taken from
#      PyPI's torch==2.11.0 wheel; the build finds it there without any setting.
#   3. A project-local Python venv, .deps/pyenv (git-ignored), holding packages from PyPI
#      that the end-to-end tests read condensa's files with: `safetensors` and `numpy`
#      (checkpoints and exports), `tensorboard` (the event files under run.dir/tb/), `pillow`
#      (the report's screenshot).
# Environment: CONDENSA_TORCH_WHEEL=/path/to/torch-2.11.0-*.whl uses an already downloaded
# wheel instead of PyPI (machines without network).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYENV="$root/.deps/pyenv"
# PyPI name:import name of each package the venv must hold.
PY_PACKAGES=(safetensors:safetensors numpy:numpy tensorboard:tensorboard pillow:PIL)

# ---- 1. Debian packages -------------------------------------------------------------------
PACKAGES=(
  build-essential cmake ccache git
  python3 python3-pip python3-venv
  libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin
  chromium
)

install_debian_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all Debian packages present"
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=sudo; else
      echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The venv is complete when its python imports every package; a missing one is installed into
# the existing venv (one that cannot run python is recreated).
install_python_venv() {
  local entry missing=() imports=()
  for entry in "${PY_PACKAGES[@]}"; do imports+=("${entry#*:}"); done
  if [ -x "$PYENV/bin/python" ] && "$PYENV/bin/python" -c "import sys" 2>/dev/null; then
    for entry in "${PY_PACKAGES[@]}"; do
      "$PYENV/bin/python" -c "import ${entry#*:}" 2>/dev/null || missing+=("${entry%%:*}")
    done
    if [ ${#missing[@]} -eq 0 ]; then
      echo "setup: Python venv $PYENV present"
      return
    fi
  else
    echo "setup: creating Python venv $PYENV"
    rm -rf "$PYENV"
    python3 -m venv "$PYENV"
    for entry in "${PY_PACKAGES[@]}"; do missing+=("${entry%%:*}"); done
  fi
  echo "setup: installing ${missing[*]} into $PYENV"
  "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  "$PYENV/bin/python" -c "import $(IFS=,; echo "${imports[*]}")"
}

install_debian_packages

# ---- 2. LibTorch 2.11 into .deps/libtorch -------------------------------------------------
# The wheel carries a complete LibTorch (include/, lib/, share/cmake/) built for CUDA 13.0.
# Only those three folders are unpacked (about 1 GB); the wheel's Python modules and its
# ~4 GB of nvidia-* pip dependencies are not installed: the CPU build links libtorch_cpu and
# libc10, whose CUDA runtime dependencies (libcudart, libcupti) come with the CUDA toolkit.
# CMakeLists.txt decides whether libtorch_cuda is usable (CONDENSA_TORCH_CUDA).
TORCH_VERSION=2.11.0
prefix="$root/.deps/libtorch"
if [ "$(cat "$prefix/VERSION" 2>/dev/null || true)" = "$TORCH_VERSION" ]; then
  echo "setup: LibTorch $TORCH_VERSION present in .deps/libtorch"
else
  mkdir -p "$root/.deps"
  work="$(mktemp -d "$root/.deps/tmp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  wheel="${CONDENSA_TORCH_WHEEL:-}"
  if [ -z "$wheel" ]; then
    echo "setup: downloading torch==$TORCH_VERSION from PyPI (530 MB wheel, no dependencies)"
    python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
      --python-version 3.11 --platform manylinux_2_28_x86_64 "torch==$TORCH_VERSION" -d "$work"
    wheel="$(ls "$work"/torch-"$TORCH_VERSION"-*.whl)"
  fi
  echo "setup: unpacking LibTorch $TORCH_VERSION into .deps/libtorch"
  python3 - "$wheel" "$work/libtorch" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
keep = ("torch/include/", "torch/lib/", "torch/share/")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(keep) or name.endswith("/") or "libtorch_python" in name:
            continue
        dest = os.path.join(out, name[len("torch/"):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.chmod(dest, (info.external_attr >> 16) & 0o777 or 0o644)
PY
  echo "$TORCH_VERSION" >"$work/libtorch/VERSION"
  rm -rf "$prefix"
  mv "$work/libtorch" "$prefix"  # the VERSION stamp makes it complete: a crash above leaves none
  echo "setup: LibTorch $TORCH_VERSION installed ($(du -sh "$prefix" | cut -f1))"
fi

# ---- 3. Python venv with the standard readers (safetensors, TensorBoard, Pillow) -----------------------------------
install_python_venv
echo "setup: done"
