#!/usr/bin/env bash
# Builds the engine and its tests against LibTorch 2.x and runs the tests,
# on a machine that reaches only Debian's archive: Debian 13 (trixie)
# packages LibTorch 2.6.0 (CPU), so this makes a trixie chroot with
# mmdebstrap (gcc 14, Abseil 20240722, GoogleTest 1.15), copies the tracked
# files into it and runs cmake -DCOMPRESS_BUILD_SERVER=OFF, ninja and ctest
# there. Root only (chroot, bind mounts). Not part of scripts/test.sh: the
# chroot takes ~20 min to make and the build ~1 h of one core.
#
#   scripts/check-libtorch2.sh [CHROOT_DIR]     # default /var/tmp/compressd-trixie
#   CTEST_ARGS="-R model_info_test" scripts/check-libtorch2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/var/tmp/compressd-trixie}
PACKAGES=build-essential,cmake,ninja-build,ccache,pkg-config,libtorch-dev,libabsl-dev,nlohmann-json3-dev,libgtest-dev,libgmock-dev,zlib1g-dev,libopenblas0-pthread,dataset-fashion-mnist,python3-torch

if [ ! -x "$ROOT/usr/bin/cmake" ]; then
  echo "check-libtorch2: making a trixie chroot in $ROOT (mmdebstrap)"
  mmdebstrap --variant=apt --mode=root --include="$PACKAGES" trixie "$ROOT" \
    http://deb.debian.org/debian
fi
mkdir -p "$ROOT/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOT/src"
for m in proc dev sys; do
  mountpoint -q "$ROOT/$m" || mount --bind "/$m" "$ROOT/$m"
done
trap 'for m in proc dev sys; do umount "$ROOT/$m" 2>/dev/null || true; done' EXIT
chroot "$ROOT" bash -c "cd /src && cmake -S . -B build-t -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCOMPRESS_BUILD_SERVER=OFF -DCOMPRESS_BUILD_BENCH=OFF | grep 'compressd:' && \
  ninja -C build-t -j${JOBS:-$(nproc)} && cd build-t && ctest --output-on-failure ${CTEST_ARGS:-}"
