#!/usr/bin/env bash
# Runs the benchmarks and prints their tables. Usage: bench/run.sh [service]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
bash scripts/build.sh bench_service >/dev/null
export COMPRESS_SOURCE_DIR=$PWD
echo "## Machine"
echo "- $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/^Model name: *//p')"
echo "- OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, BLAS: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || echo unknown)"
echo
echo "## Service"
"$BUILD_DIR/bench/bench_service" "$@"
