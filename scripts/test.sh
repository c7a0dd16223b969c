#!/usr/bin/env bash
# Installs every dependency, builds everything and runs all tests with ctest.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The container image's package stages (bases and *-deps layers: downloads
# and dpkg, little CPU) in the background while the host compiles;
# tests/deploy/image_test.sh waits for them (a lock) and builds the image.
mkdir -p "${BUILD_DIR:-build}"
(deploy/build-image.sh --prepare > "${BUILD_DIR:-build}/image-prepare.log" 2>&1 || true) &
# Lock annotations first: clang on the torch-free libraries, fails fast.
bash scripts/thread-safety.sh
# No function in server/ over 120 lines (issue 12): long ones hide stages.
bash scripts/function_lengths.sh --max 120 --top 3 server
# The parsers' libFuzzer targets (issue 14), each for a bounded time on its
# seed corpus; a separate clang build in build-fuzz/ (see README, Fuzzing).
bash scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-15}"
bash scripts/build.sh
# Last, so the output ends with ctest's summary.
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j 2)
