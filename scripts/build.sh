#!/usr/bin/env bash
# Configures (once) and builds compressd. Usage: scripts/build.sh [TARGET...]
# With no target, builds the server, CLI and tests; `benchmarks` builds the
# benchmarks (bench/run.sh builds the ones it runs).
# BUILD_DIR (default build/) and JOBS (default: number of cores) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
# Lets ccache reuse objects across checkouts in different folders.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
JOBS=${JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
if [ $# -gt 0 ]; then
  ninja -C "$BUILD_DIR" -j "$JOBS" "$@"
else
  ninja -C "$BUILD_DIR" -j "$JOBS"
fi
