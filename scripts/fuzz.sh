#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang with ASan + UBSan, in
# build-fuzz/) and runs each for a bounded time on its seed corpus
# (tests/fuzz/corpus/<target>/). Fails when any target finds a crash, a
# leak, a timeout (-timeout=10 s per input) or an out-of-memory
# (-rss_limit_mb=2048); the input that did it is left in
# build-fuzz/findings/<target>/ and can be replayed with
#   build-fuzz/tests/fuzz/<target> build-fuzz/findings/<target>/crash-...
#
#   scripts/fuzz.sh                         all targets, 15 s each
#   scripts/fuzz.sh --seconds 300 idx_fuzzer
#
# New inputs found go to build-fuzz/corpus/<target>/ (kept between runs, not
# committed). FUZZ_BUILD_DIR (default build-fuzz/), CXX_CLANG (default
# clang++) and JOBS (default: number of cores) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
CXX_CLANG=${CXX_CLANG:-clang++}
JOBS=${JOBS:-$(nproc)}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
ALL_TARGETS=(safetensors_fuzzer idx_fuzzer upload_fuzzer spec_fuzzer dataset_fuzzer
  packed_model_fuzzer zip_directory_fuzzer)

seconds=15
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#--seconds=}"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then targets=("${ALL_TARGETS[@]}"); fi
for t in "${targets[@]}"; do
  if [ ! -d "tests/fuzz/corpus/$t" ]; then
    echo "fuzz: unknown target $t (known: ${ALL_TARGETS[*]})" >&2
    exit 2
  fi
done

if ! command -v "$CXX_CLANG" > /dev/null; then
  echo "fuzz: $CXX_CLANG not found (scripts/install-deps.sh installs clang)" >&2
  exit 1
fi
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER="$CXX_CLANG" -DCOMPRESS_FUZZ=ON \
    -DCOMPRESS_BUILD_TESTS=OFF -DCOMPRESS_BUILD_BENCH=OFF > /dev/null
fi
ninja -C "$BUILD_DIR" -j "$JOBS" "${targets[@]}"

# Leaks are findings, except LibTorch's own (tests/fuzz/lsan.supp says which).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$BUILD_DIR/corpus/$t" "$BUILD_DIR/findings/$t"
  log="$BUILD_DIR/findings/$t/last-run.log"
  echo "fuzz: $t for ${seconds} s"
  dict=()
  if [ -f "tests/fuzz/$t.dict" ]; then dict=(-dict="tests/fuzz/$t.dict"); fi
  status=0
  "$BUILD_DIR/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$BUILD_DIR/findings/$t/" "${dict[@]}" \
    "$BUILD_DIR/corpus/$t" "tests/fuzz/corpus/$t" > "$log" 2>&1 || status=$?
  # The last status line: runs, coverage, corpus.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::number_of_executed_units' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $status); log: $log" >&2
    grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written' "$log" >&2 || true
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in ${failed[*]} (inputs in $BUILD_DIR/findings/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, nothing found"
