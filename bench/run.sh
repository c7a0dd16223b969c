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

# Hessian-vector products (bench_hessian): cost and accuracy per HVP method on
# the reference models and untrained torchvision models (generated once into
# bench/out/ with /usr/bin/python3, nothing downloaded). Skip with
# BENCH_HESSIAN=0; repetitions per model are the last field (vit_b_16 takes
# seconds per gradient on 2 cores, so it gets one).
if [ "${BENCH_HESSIAN:-1}" != 0 ]; then
  bash scripts/build.sh bench_hessian >/dev/null
  TV_DIR=bench/out
  for m in resnet18 mobilenet_v2 vit_b_16; do
    if [ ! -f "$TV_DIR/$m.pt" ]; then
      /usr/bin/python3 bench/make_torchvision_models.py "$TV_DIR" >/dev/null
      break
    fi
  done
  echo
  "$BUILD_DIR/bench/bench_hessian" \
    models/fmnist_cnn.pt:1,28,28:64:5 \
    models/fmnist_vit.pt:1,28,28:64:5 \
    "$TV_DIR/resnet18.pt:3,224,224:8:2" \
    "$TV_DIR/mobilenet_v2.pt:3,224,224:8:2" \
    "$TV_DIR/vit_b_16.pt:3,224,224:2:1"
fi
