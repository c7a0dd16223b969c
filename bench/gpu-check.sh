#!/usr/bin/env bash
# GPU check (issue 17): on a machine with one NVIDIA GPU, PyTorch 2.x (CUDA)
# and nvcc but no package registry, builds the engine, its tests and the
# engine benchmarks against the wheel's LibTorch, runs the engine tests on
# cuda:0 and prints the HVP, ANALYZE, GPTQ and PRUNE tables on CUDA next to
# the same runs on the machine's CPU. Meant to fit one 10-minute device call.
#
#   bash bench/gpu-check.sh --fetch-debs  # here, once: the .debs into .gpu-debs/
#   bash bench/gpu-check.sh               # on the GPU machine (carry [".gpu-debs"])
#   bash bench/gpu-check.sh --cpu-only    # here: Debian's LibTorch 1.13, device
#                                         # cpu, short benchmarks (a dry run)
#
# The .debs are unpacked with `dpkg -x` (or ar + tar) into .gpu-deps/, never
# over /. Tools the machine already has (cmake >= 3.25, ninja) are preferred
# to the carried ones. Results: $OUT (device call) or gpu-check-out/:
# build.log, tests.log, tables.md. Environment: JOBS (default nproc),
# GPU_CHECK_TARGETS (default "all" and the four benchmarks),
# GPU_CHECK_TESTS (ctest -R regex; default: every test labelled engine),
# GPU_CHECK_TEST_S (default 180: the tests' time limit), GPU_CHECK_BUDGET_S
# (default 560: later steps are cut or skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
MODE=gpu
case "${1:-}" in
  --fetch-debs) MODE=fetch ;;
  --cpu-only) MODE=cpu ;;
  "") ;;
  *) echo "usage: $0 [--fetch-debs|--cpu-only]" >&2; exit 2 ;;
esac
DEBS_DIR=$ROOT/.gpu-debs
PREFIX=$ROOT/.gpu-deps
OUT_DIR=${OUT:-$ROOT/gpu-check-out}
JOBS=${JOBS:-$(nproc)}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
# Build and link needs (Abseil, JSON, GoogleTest, zlib headers), the build
# tools with cmake's direct library dependencies, and the Fashion-MNIST
# files the tests and benchmarks read (builtin:fashion-mnist/...).
DEBS=(libabsl-dev libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev zlib1g-dev
  ninja-build cmake cmake-data libjsoncpp25 librhash0 libuv1 libarchive13 libcurl4
  dataset-fashion-mnist)
# GPU_CHECK_TARGETS replaces the list (a dry run on a slow machine).
read -r -a TARGETS <<<"${GPU_CHECK_TARGETS:-all bench_hessian bench_analyze bench_quantize bench_prune}"

die() { echo "gpu-check: $*" >&2; exit 1; }
note() { echo "gpu-check [$((SECONDS - START)) s]: $*" >&2; }
left() { echo $((BUDGET - (SECONDS - START))); }

fetch_debs() {
  mkdir -p "$DEBS_DIR"
  (cd "$DEBS_DIR" && rm -f ./*.deb && apt-get download "${DEBS[@]}")
  du -sh "$DEBS_DIR"
}

# dpkg -x where dpkg exists, else ar + tar (binutils comes with gcc).
unpack_debs() {
  ls "$DEBS_DIR"/*.deb >/dev/null 2>&1 || die "no .debs in $DEBS_DIR (run --fetch-debs here and carry .gpu-debs)"
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  for deb in "$DEBS_DIR"/*.deb; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$deb" "$PREFIX"
    else  # tar detects the compression only in a file, not in a pipe
      local tmp
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$deb") && tar -xf "$tmp"/data.tar.* -C "$PREFIX"
      rm -rf "$tmp"
    fi
  done
  # zlib1g-dev's libz.so points at zlib1g's file, not carried: use the
  # machine's libz.so.1 (Python needs it, so it is there).
  local libdir=$PREFIX/usr/lib/x86_64-linux-gnu
  if [ -L "$libdir/libz.so" ] && [ ! -e "$libdir/libz.so" ]; then
    local sys
    sys=$(ldconfig -p | awk '/libz\.so\.1 .*x86-64/ {print $NF; exit}')
    [ -n "$sys" ] && ln -sf "$sys" "$libdir/libz.so"
  fi
}

version_ok() { # version_ok CMAKE: its version >= 3.25
  local v
  v=$("$1" --version 2>/dev/null | awk 'NR == 1 {print $3}') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n3.25\n' "$v" | sort -V | head -1)" = 3.25 ]
}

# cmake >= 3.25: the machine's, pip's (python3 -m cmake), else the carried
# Debian one, with only the libraries the machine lacks taken from the
# prefix (its libarchive needs glibc 2.36: on 2.35 the machine's own
# libarchive13 must be there).
pick_cmake() {
  local c
  c=$(command -v cmake || true)
  if [ -n "$c" ] && version_ok "$c"; then CMAKE=$c; return; fi
  c=$(python3 -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null || true)
  if [ -n "$c" ] && version_ok "$c"; then CMAKE=$c; return; fi
  c=$PREFIX/usr/bin/cmake
  [ -x "$c" ] || die "no cmake >= 3.25 on this machine and none carried"
  local fallback=$PREFIX/fallback-lib lib i
  mkdir -p "$fallback"
  for i in 1 2 3 4 5; do
    for lib in $(LD_LIBRARY_PATH=$fallback ldd "$c" | awk '/not found/ {print $1}'); do
      [ -e "$PREFIX/usr/lib/x86_64-linux-gnu/$lib" ] &&
        ln -sf "$PREFIX/usr/lib/x86_64-linux-gnu/$lib" "$fallback/$lib"
    done
  done
  export LD_LIBRARY_PATH=$fallback${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  version_ok "$c" || die "the carried cmake does not run here: $(ldd "$c" | grep 'not found' | tr '\n' ' ')"
  CMAKE=$c
}

pick_ninja() {
  NINJA=$(command -v ninja || true)
  [ -n "$NINJA" ] || NINJA=$PREFIX/usr/bin/ninja
  "$NINJA" --version >/dev/null || die "no ninja"
}

# The wheel's LibTorch: CMake prefix, version, CUDA, C++ ABI. Debian's
# libabsl (and libgtest.a) use the C++11 ABI: a pre-C++11-ABI wheel (PyTorch
# before 2.6 on pip) cannot link them, and building Abseil from source does
# not fit the call, so that is reported and the check stops.
torch_args() {
  local info prefix version cuda abi
  info=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path, torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)') ||
    die "python3 cannot import torch"
  read -r prefix version cuda abi <<<"$info"
  note "PyTorch $version, CUDA $cuda, _GLIBCXX_USE_CXX11_ABI=$abi, cmake prefix $prefix"
  [ "$abi" = True ] || die "PyTorch $version is built with the pre-C++11 ABI (_GLIBCXX_USE_CXX11_ABI=0); Debian's Abseil and GoogleTest use the C++11 ABI and cannot be linked with it. Use a PyTorch >= 2.6 wheel (C++11 ABI) or a cxx11-ABI LibTorch."
  [ "$cuda" != None ] || die "PyTorch $version has no CUDA"
  local nvcc
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  [ -n "$nvcc" ] || die "no nvcc (the wheel's CMake config needs the CUDA toolkit)"
  local cuda_home
  cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  CONFIG_ARGS+=("-DCMAKE_PREFIX_PATH=$prefix;$PREFIX/usr" "-DCMAKE_CUDA_COMPILER=$nvcc"
    "-DCUDAToolkit_ROOT=$cuda_home" "-DCUDA_TOOLKIT_ROOT_DIR=$cuda_home" -DUSE_SYSTEM_NVTX=ON)
  # PyTorch 2.1-2.4 want libnvToolsExt, which CUDA >= 12.9 toolkits lack;
  # the wheel's nvidia-nvtx package has it.
  local nvtx
  nvtx=$(python3 -c 'import nvidia.nvtx, os; print(os.path.join(list(nvidia.nvtx.__path__)[0], "lib"))' 2>/dev/null || true)
  if [ -n "$nvtx" ]; then
    nvtx=$(ls "$nvtx"/libnvToolsExt.so* 2>/dev/null | head -1 || true)
    [ -n "$nvtx" ] && CONFIG_ARGS+=("-DCUDA_nvToolsExt_LIBRARY=$nvtx")
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # H100 / H200
}

configure_and_build() {
  CONFIG_ARGS=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPRESS_BUILD_SERVER=OFF
    "-DCMAKE_MAKE_PROGRAM=$NINJA")
  if [ "$MODE" = cpu ]; then
    CONFIG_ARGS+=("-DCMAKE_PREFIX_PATH=$PREFIX/usr")
  else
    torch_args
  fi
  "$CMAKE" -S . -B "$BUILD" "${CONFIG_ARGS[@]}" >"$OUT_DIR/build.log" 2>&1 ||
    { tail -40 "$OUT_DIR/build.log"; die "configure failed (build.log)"; }
  local t0=$SECONDS
  "$NINJA" -C "$BUILD" -j "$JOBS" "${TARGETS[@]}" >>"$OUT_DIR/build.log" 2>&1 ||
    { grep -m5 -A10 'error' "$OUT_DIR/build.log"; die "build failed (build.log)"; }
  BUILD_S=$((SECONDS - t0))
  note "built ${TARGETS[*]} with -j $JOBS in $BUILD_S s"
}

# The engine tests (ctest label engine) with COMPRESS_TEST_DEVICE set; four
# at a time, each with a quarter of the cores.
run_tests() {
  local t
  t=$(( $(left) - 240 ))
  [ "$t" -gt "${GPU_CHECK_TEST_S:-180}" ] && t=${GPU_CHECK_TEST_S:-180}
  if [ "$t" -lt 30 ]; then note "tests skipped: no time left"; TESTS_RC=skipped; return; fi
  local select=(-L engine)
  [ -n "${GPU_CHECK_TESTS:-}" ] && select=(-R "$GPU_CHECK_TESTS")
  TESTS_RC=0
  (cd "$BUILD" && COMPRESS_TEST_DEVICE=$DEVICE OMP_NUM_THREADS=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 )) \
    timeout "$t" ctest "${select[@]}" -j 4 --timeout "$t" --output-on-failure) \
    >"$OUT_DIR/tests.log" 2>&1 || TESTS_RC=$?
  note "engine tests on $DEVICE: rc $TESTS_RC ($(grep -E 'tests passed|tests failed' "$OUT_DIR/tests.log" || echo 'see tests.log'))"
}

# SLOT: seconds for the next benchmark run, an equal share of what is left
# among the runs still to come (RUNS_LEFT), so the CPU runs get time too.
next_slot() {
  SLOT=$(( $(left) / RUNS_LEFT ))
  [ "$SLOT" -gt 0 ] || SLOT=1
  RUNS_LEFT=$(( RUNS_LEFT > 1 ? RUNS_LEFT - 1 : 1 ))
}

# bench DEVICE COMMAND...: one benchmark on one device, stopped when its
# slot is over (what it printed so far stays).
bench() {
  local device=$1 t rc=0
  shift
  next_slot
  t=$SLOT
  if [ "$t" -lt 10 ]; then echo "(skipped on $device: no time left)"; return; fi
  echo
  echo "### $device: $(basename "$1") ${*:2}"
  echo
  COMPRESS_BENCH_DEVICE=$device timeout "$t" "$@" 2>>"$OUT_DIR/bench-stderr.log" || rc=$?
  [ "$rc" = 0 ] || echo "(exit $rc$([ "$rc" = 124 ] && echo ": stopped, time budget"))"
}

# ANALYZE prints one JSON line; a table row of it.
analyze_row() {
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        print(line); continue
    j = json.loads(line)
    print("| %s | %s | %d | %.2f | %d | %d | %.4g ± %.2g | %s | %.0f |" % (j.get("device"), j["method"],
          j["layers"], j["wall_s"], j["hvps"], j["trace_probes"], j["total_trace"], j["total_trace_se"],
          "%.4g" % j["eigenvalue"] if "eigenvalue" in j else "-", j["vm_hwm_kib"] / 1024))'
}

run_benches() {
  local b=$BUILD/bench n=$(nproc) devices=(cpu) hvp analyze quantize prune
  [ "$MODE" = gpu ] && devices=(cuda:0 cpu)
  if [ "$MODE" = cpu ]; then  # a dry run on a small machine
    hvp=(models/fmnist_cnn.pt:1,28,28:16:1)
    analyze=(--model=models/fmnist_cnn.pt --samples=64 --trace-min=5 --trace-max=5 --eig-max=5)
    quantize=(--models cnn --budgets 4 --samples 64 --eval 200 --trace-max-probes 5)
    prune=(--saliency magnitude --recovery 0 --samples 64 --saliency-samples 32 --eval 100 --steps 1)
  else
    hvp=(models/fmnist_cnn.pt:1,28,28:256:3 models/fmnist_vit.pt:1,28,28:256:3)
    [ -f bench/out/resnet18.pt ] && hvp+=(bench/out/resnet18.pt:3,224,224:32:2)
    analyze=(--model=models/fmnist_vit.pt --samples=1024 --batch=128 --trace-max=50 --eig-max=30)
    quantize=(--models cnn,vit --budgets 4 --samples 256 --eval 2000 --trace-max-probes 20)
    prune=(--saliency hessian --recovery 0,100 --samples 1024 --saliency-samples 256 --eval 2000
      --steps 2)
  fi
  RUNS_LEFT=$(( 4 * ${#devices[@]} ))
  echo "## GPU check: $(date -u +%F), $(nproc) cores$([ "$MODE" = gpu ] && echo ", $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)")"
  echo
  echo "- build (${TARGETS[*]}, -j $JOBS): $BUILD_S s; engine tests on $DEVICE: rc $TESTS_RC"
  echo
  echo "## HVP (bench_hessian)"
  for d in "${devices[@]}"; do bench "$d" "$b/bench_hessian" "${hvp[@]}"; done
  echo
  echo "## ANALYZE (bench_analyze analyze, builtin:fashion-mnist/train, traces and top eigenvalue)"
  echo
  echo "| device | HVP method | layers | wall s | HVPs | trace probes | Tr(H) ± SE | λ_max | peak RSS MiB |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for d in "${devices[@]}"; do
    next_slot
    COMPRESS_BENCH_DEVICE=$d timeout "$SLOT" "$b/bench_analyze" analyze \
      --data=builtin:fashion-mnist/train --eigen --threads="$n" "${analyze[@]}" \
      2>>"$OUT_DIR/bench-stderr.log" | analyze_row || echo "| $d | failed or stopped (bench-stderr.log) |"
  done
  echo
  echo "## GPTQ (bench_quantize --rounding gptq)"
  for d in "${devices[@]}"; do bench "$d" "$b/bench_quantize" --rounding gptq --threads "$n" "${quantize[@]}"; done
  echo
  echo "## PRUNE (bench_prune, models/fmnist_vit.pt)"
  for d in "${devices[@]}"; do bench "$d" "$b/bench_prune" --threads "$n" "${prune[@]}"; done
}

mkdir -p "$OUT_DIR"
if [ "$MODE" = fetch ]; then fetch_debs; exit 0; fi
unpack_debs
pick_cmake
pick_ninja
note "cmake $CMAKE ($("$CMAKE" --version | head -1)), ninja $NINJA"
# The tests and benchmarks read builtin:fashion-mnist/... from here.
[ -d "$PREFIX/usr/share/datasets/fashion-mnist" ] &&
  export COMPRESS_FASHION_MNIST_DIR=$PREFIX/usr/share/datasets/fashion-mnist
export COMPRESS_SOURCE_DIR=$ROOT
if [ "$MODE" = cpu ]; then
  BUILD=$ROOT/build-gpu-cpu DEVICE=cpu
else
  BUILD=$ROOT/build-gpu DEVICE=cuda:0
  nvidia-smi -L >&2 || die "nvidia-smi fails: no GPU?"
  mkdir -p bench/out
  # An untrained torchvision resnet18 for the HVP table, when torchvision is there.
  python3 -c 'import sys, torch, torchvision
m = torchvision.models.resnet18().eval()
torch.jit.trace(m, torch.rand(1, 3, 224, 224)).save(sys.argv[1])' bench/out/resnet18.pt 2>/dev/null ||
    note "no torchvision: HVP table without resnet18"
fi
configure_and_build
run_tests
run_benches | tee "$OUT_DIR/tables.md"
note "done in $((SECONDS - START)) s; results in $OUT_DIR"
