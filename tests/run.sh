#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs every test (unit and multi-rank) via CTest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/launch/setup.sh"
"$root/launch/build.sh"
build="${CONDENSA_BUILD_DIR:-$root/build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$build"
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 1200 "$@"
