#!/usr/bin/env bash
# Installs the dependencies of compressd from Debian 12 packages.
#   scripts/install-deps.sh            build + test + runtime (developers, CI)
#   scripts/install-deps.sh --runtime  shared libraries only (container image)
# Idempotent: safe to run again; installs only what is missing. This is the
# only place that lists packages (README, .ci/run and the Dockerfile call it).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev python3-torch python3-torchvision python3-numpy
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev nlohmann-json3-dev dataset-fashion-mnist libopenblas0-pthread
  libssl-dev zlib1g-dev
)

RUNTIME_PACKAGES=(
  libtorch1.13 libgrpc++1.51 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libsqlite3-0 libssl3 zlib1g libopenblas0-pthread
  dataset-fashion-mnist ca-certificates
)
if [ "${1:-}" = "--runtime" ]; then
  PACKAGES=("${RUNTIME_PACKAGES[@]}")
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [ "${1:-}" = "--runtime" ]; then
  $SUDO apt-get clean
  $SUDO rm -rf /var/lib/apt/lists/*
fi
