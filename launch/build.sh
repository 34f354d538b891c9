#!/usr/bin/env bash
# Configures and builds condensa into ${CONDENSA_BUILD_DIR:-build} (Release, -j${JOBS:-nproc}).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CONDENSA_BUILD_DIR:-$root/build}"
jobs="${JOBS:-$(nproc)}"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release ${CONDENSA_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
grep -E "condensa:" "$build/configure.log" || true
cmake --build "$build" -j "$jobs" "$@"
