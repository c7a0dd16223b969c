#!/usr/bin/env bash
# Installs the dependencies of compressd from Debian 12 packages.
#   scripts/install-deps.sh            build + test + runtime (developers, CI)
#   scripts/install-deps.sh --runtime  shared libraries only (container image);
#       add --no-libtorch for the CUDA image, which brings its own LibTorch
#   scripts/install-deps.sh --build    what compiling compressd/compressctl
#       needs (the image's build stage)
#   scripts/install-deps.sh --cuda-toolkit  Debian's CUDA toolkit (non-free),
#       to compile against a CUDA LibTorch (Dockerfile, LIBTORCH=cuda)
# Idempotent: safe to run again; installs only what is missing. This is the
# only place that lists packages (README, .ci/run and the Dockerfile call it);
# the npm packages that validate deploy/ (deploy/validate) and the S3 server
# the blob-store tests start (tests/store/s3rver) are pinned in each folder's
# package-lock.json and installed from here with `npm ci`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev python3-torch python3-torchvision python3-numpy
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev nlohmann-json3-dev dataset-fashion-mnist libopenblas0-pthread
  libssl-dev zlib1g-dev openssl clang libclang-rt-14-dev libcurl4-openssl-dev universal-ctags
  libpq-dev postgresql
  buildah mmdebstrap uidmap
)

# What the image's build stage needs to compile compressd and compressctl
# (Dockerfile; no tests, fuzzers, PostgreSQL or Node.js).
BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libsqlite3-dev nlohmann-json3-dev libopenblas0-pthread
  libssl-dev zlib1g-dev libcurl4-openssl-dev libpq-dev
)

RUNTIME_PACKAGES=(
  libtorch1.13 libgrpc++1.51 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libsqlite3-0 libpq5 libssl3 zlib1g libopenblas0-pthread
  dataset-fashion-mnist ca-certificates
)
# Debian 12 non-free: CUDA 11.8 headers and libraries for CMake's CUDA checks.
CUDA_TOOLKIT_PACKAGES=(nvidia-cuda-toolkit)

if [ "${1:-}" = "--runtime" ]; then
  PACKAGES=("${RUNTIME_PACKAGES[@]}")
  if [ "${2:-}" = "--no-libtorch" ]; then
    PACKAGES=("${PACKAGES[@]/libtorch1.13}")
  fi
elif [ "${1:-}" = "--build" ]; then
  PACKAGES=("${BUILD_PACKAGES[@]}")
elif [ "${1:-}" = "--cuda-toolkit" ]; then
  PACKAGES=("${CUDA_TOOLKIT_PACKAGES[@]}")
  if [ -f /etc/apt/sources.list.d/debian.sources ] &&
     ! grep -q non-free /etc/apt/sources.list.d/debian.sources; then
    sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' \
      /etc/apt/sources.list.d/debian.sources
  fi
elif ! command -v npm >/dev/null 2>&1; then
  # Node.js validates deploy/ (tests/deploy) and runs s3rver (tests/store).
  # A machine that already has a Node.js with npm keeps it: NodeSource's
  # nodejs, for one, conflicts with Debian's npm package.
  PACKAGES+=(nodejs npm)
fi

# npm ci in each Node.js folder, skipped while its node_modules matches its
# lock: deploy/validate (manifest checks) and tests/store/s3rver (the
# S3-compatible server of the blob-store tests).
install_node_modules() {
  [ -z "${1:-}" ] || return 0
  local dir stamp want
  for dir in "$ROOT/deploy/validate" "$ROOT/tests/store/s3rver"; do
    [ -f "$dir/package-lock.json" ] || continue
    stamp="$dir/node_modules/.installed-from-lock"
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then continue; fi
    echo "install-deps: npm ci in ${dir#"$ROOT"/}"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
  done
}

missing=()
for p in "${PACKAGES[@]}"; do
  [ -n "$p" ] || continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  install_node_modules "${1:-}"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [ "${1:-}" = "--runtime" ] || [ "${1:-}" = "--build" ]; then
  $SUDO apt-get clean
  $SUDO rm -rf /var/lib/apt/lists/*
fi
install_node_modules "${1:-}"
