#!/usr/bin/env bash
# Installs every dependency, builds everything and runs all tests with ctest.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
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
