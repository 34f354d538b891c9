#!/usr/bin/env bash
# Installs everything condensa needs to build and test on Debian 12, idempotently:
# a fast no-op when every package is already present.
#
# Besides the Debian packages it creates a project-local Python venv, .deps/pyenv (git-ignored),
# holding the `safetensors` and `numpy` packages from PyPI: the end-to-end tests read
# condensa's checkpoints and exports with that standard reader.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYENV="$ROOT/.deps/pyenv"
PY_PACKAGES=(safetensors numpy)

PACKAGES=(
  build-essential cmake ccache git
  libtorch-dev libopenblas0-pthread
  libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin
  python3 python3-venv
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

# The venv is complete when its python imports every package; otherwise (re)create it.
install_python_venv() {
  local imports
  imports="$(IFS=,; echo "${PY_PACKAGES[*]}")"
  if [ -x "$PYENV/bin/python" ] && "$PYENV/bin/python" -c "import $imports" 2>/dev/null; then
    echo "setup: Python venv $PYENV present"
    return
  fi
  echo "setup: creating Python venv $PYENV (${PY_PACKAGES[*]})"
  rm -rf "$PYENV"
  python3 -m venv "$PYENV"
  "$PYENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  "$PYENV/bin/python" -c "import $imports"
}

install_debian_packages
install_python_venv
echo "setup: done"
