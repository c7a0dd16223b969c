#!/usr/bin/env bash
# Runs the benchmarks and prints their tables.
# Usage: bench/run.sh [service] [sandbox] [queue] [hessian] [traces] [pytorch]
#                     [memory] [quantize] [quantize-stages] [int8] [prune] [hygiene]
#                     [text]
# (no argument: all of them, in that order). BENCH_THREADS (default 2) is
# the LibTorch thread count of traces, pytorch and memory; when other work
# holds a core, use 1: two OpenMP threads on one free core measured 2.5-4x
# slower per HVP than one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
export BUILD_DIR
THREADS=${BENCH_THREADS:-2}
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(service sandbox queue hessian traces pytorch memory quantize quantize-stages int8 prune hygiene text)
want() { [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }
export COMPRESS_SOURCE_DIR=$PWD
echo "## Machine"
echo "- $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/^Model name: *//p')"
echo "- OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, BLAS: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || echo unknown)"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# Untrained torchvision models (generated once into bench/out/ with
# /usr/bin/python3, nothing downloaded).
TV_DIR=bench/out
torchvision_models() {
  for m in resnet18 mobilenet_v2 vit_b_16; do
    if [ ! -f "$TV_DIR/$m.pt" ]; then
      /usr/bin/python3 bench/make_torchvision_models.py "$TV_DIR" >/dev/null
      break
    fi
  done
}

if want sandbox; then
  bash scripts/build.sh bench_sandbox compressd >/dev/null
  echo
  echo "## Model work in child processes"
  "$BUILD_DIR/bench/bench_sandbox" --compressd="$BUILD_DIR/server/compressd"
fi

if want service; then
  bash scripts/build.sh bench_service >/dev/null
  echo
  echo "## Service"
  "$BUILD_DIR/bench/bench_service"
fi

# The shared job queue on PostgreSQL (bench_queue): jobs/s of a no-op job
# kind with 1, 2 and 4 worker replicas and the latency of their events to a
# watcher on the API replica (LISTEN/NOTIFY). Starts a throwaway PostgreSQL 15
# (tests/pg_test_util.h: Debian's postgresql-15). BENCH_QUEUE_JOBS (default
# 1000) jobs per row; ~20 s on 2 cores.
if want queue; then
  bash scripts/build.sh bench_queue >/dev/null
  echo
  echo "## Shared job queue (PostgreSQL)"
  "$BUILD_DIR/bench/bench_queue" --jobs="${BENCH_QUEUE_JOBS:-1000}"
fi

# Hessian-vector products (bench_hessian): cost and accuracy per HVP method on
# the reference models and untrained torchvision models. Skip with
# BENCH_HESSIAN=0; repetitions per model are the last field (vit_b_16 takes
# seconds per gradient on 2 cores, so it gets one).
if want hessian && [ "${BENCH_HESSIAN:-1}" != 0 ]; then
  bash scripts/build.sh bench_hessian >/dev/null
  torchvision_models
  echo
  "$BUILD_DIR/bench/bench_hessian" \
    models/fmnist_cnn.pt:1,28,28:64:5 \
    models/fmnist_vit.pt:1,28,28:64:5 \
    "$TV_DIR/resnet18.pt:3,224,224:8:2" \
    "$TV_DIR/mobilenet_v2.pt:3,224,224:8:2" \
    "$TV_DIR/vit_b_16.pt:3,224,224:2:1"
fi

# Per-layer traces on resnet18: all layers per probe vs the exact per-layer
# loop (bench_analyze traces). Batch 2 and 5 probes per layer (41 layers) keep
# it within ~15 minutes on this 2-core VM.
if want traces; then
  bash scripts/build.sh bench_analyze >/dev/null
  torchvision_models
  echo
  "$BUILD_DIR/bench/bench_analyze" traces "$TV_DIR/resnet18.pt:3,224,224:2" \
    --all-probes=100 --layer-probes=5 --threads="$THREADS"
fi

# The same ANALYZE (traces + top eigenvalue) in compressd's engine and in a
# plain PyTorch script (bench/pytorch_reference.py); /usr/bin/python3 has
# Debian's torch.
if want pytorch; then
  bash scripts/build.sh bench_analyze >/dev/null
  torchvision_models
  echo
  /usr/bin/python3 bench/compare_pytorch.py --threads="$THREADS" --runs=2 \
    2>/dev/null
fi

# Peak RSS of an ANALYZE on vit_b_16 (batch 8) per HVP method, each in a
# fresh child process (bench_analyze memory).
if want memory; then
  bash scripts/build.sh bench_analyze >/dev/null
  torchvision_models
  echo
  "$BUILD_DIR/bench/bench_analyze" memory "$TV_DIR/vit_b_16.pt:3,224,224:8" \
    --probes=2 --threads="$THREADS"
fi

# QUANTIZE quality on the reference models (bench_quantize): top-1 on the 10k
# test images at 4/3.5/3/2.5 average bits, RTN and GPTQ, with the uniform and
# no-Hessian baselines and their paired McNemar test. ~7 minutes on 2 idle
# cores.
if want quantize; then
  bash scripts/build.sh bench_quantize >/dev/null
  echo
  "$BUILD_DIR/bench/bench_quantize" --models cnn,vit --eval 10000
fi

# Time of each QUANTIZE stage (4 bits, GPTQ) on untrained torchvision models
# with 8 random calibration inputs, and GPTQ's peak memory on the largest
# linear layer.
if want quantize-stages; then
  bash scripts/build.sh bench_quantize >/dev/null
  torchvision_models
  for m in resnet18 vit_b_16; do
    echo
    "$BUILD_DIR/bench/bench_quantize" --stages "$TV_DIR/$m.pt:3,224,224" --samples 8 --probes 2
  done
fi

# model_int8.pt (W8A8, LibTorch's quantized engine) against the float CNN:
# top-1 on the test set, latency at batch 64 on one thread, alternating.
if want int8; then
  bash scripts/build.sh bench_int8 >/dev/null
  echo
  "$BUILD_DIR/bench/bench_int8" --threads 1
fi

# PRUNE quality and latency on the reference ViT (bench_prune): 50% of FLOPs
# in 4 rounds; Hessian / Taylor / magnitude saliency without recovery, then
# Hessian and magnitude with 2000 distillation steps per round (Adam, 1e-3
# cosine) on the 60k training images, each followed by COMPRESS (4-bit GPTQ
# of the pruned model); top-1 on the 10k test images; latency at batch 64.
# ~40 minutes on 2 cores.
if want prune; then
  bash scripts/build.sh bench_prune >/dev/null
  echo
  "$BUILD_DIR/bench/bench_prune" --threads "$THREADS" --saliency hessian,taylor,magnitude \
    --recovery 0 --eval 10000
  "$BUILD_DIR/bench/bench_prune" --threads "$THREADS" --saliency hessian,magnitude \
    --recovery 2000 --samples 60000 --lr 1e-3 --eval 10000 --compress
fi

# Sensitivity hygiene: 4-bit QUANTIZE jobs on untrained models whose Ω is
# negative or unresolved; test-set output errors (1,000 images) computed in
# stock PyTorch against uniform 4-bit RTN. ~10 minutes on 2 idle cores.
if want hygiene; then
  bash scripts/build.sh bench_hygiene >/dev/null
  REF=tests/fixtures/hygiene_reference.py
  [ -f "$TV_DIR/vit_untrained.pt" ] || /usr/bin/python3 "$REF" vit "$TV_DIR/vit_untrained.pt"
  [ -f "$TV_DIR/efficientnet_b0_gray.pt" ] ||
    /usr/bin/python3 "$REF" efficientnet "$TV_DIR/efficientnet_b0_gray.pt"
  echo
  echo "## Sensitivity hygiene (4 bits, exact search, RTN)"
  echo
  echo "| model | Ω | layers | Ω(4) < 0 | other fallbacks | avg bits | searched err (calib) | uniform err (calib) | kept | HVPs | s | test err, job | test err, uniform 4-bit RTN |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
  for run in "vit_untrained quadratic 256 0" "vit_untrained trace 256 10" \
             "efficientnet_b0_gray trace 64 10"; do
    read -r name omega samples probes <<<"$run"
    out=$(mktemp -d)
    "$BUILD_DIR/bench/bench_hygiene" "$TV_DIR/$name.pt" "$omega" "$samples" "$probes" "$out" >"$out/row"
    /usr/bin/python3 "$REF" compare "$TV_DIR/$name.pt" "$(sed -n 's/^MODEL_PT=//p' "$out/row")" 4 1000 "$out/errors"
    mapfile -t errors <"$out/errors"
    echo "$(grep '^|' "$out/row" | sed 's/ |$//') | ${errors[0]} | ${errors[1]} |"
    rm -rf "$out"
  done
fi

# QUANTIZE quality on the reference text models (bench_text): perplexity of
# the decoder with its block Linears at 4 and 3 bits, GPTQ and RTN; top-1 of
# the BERT-style classifier with Q-BERT-style mixed precision (trace Ω,
# group-wise 32, 4 average bits), RTN and GPTQ; then PRUNE of the classifier
# to -40 % FLOPs (Hessian saliency, 2 rounds) with distillation recovery,
# 300 steps per round on the 4,096 training sequences and 1000 steps on all
# 60,000, one thread (the latency is the job's alternating batch-64 timing).
# Token data written once into bench/out/text (first 4,096 training
# sequences) and bench/out/text-full (all) by models/train_text.py. Measured
# on one loaded core: 3-5 minutes per decoder job (4), 2-14 per classifier
# job (2), 1.5 and 3.5 per PRUNE job.
if want text; then
  bash scripts/build.sh bench_text >/dev/null
  TEXT_DIR=$TV_DIR/text
  [ -f "$TEXT_DIR/fmnist_tokens_test_lm.safetensors" ] ||
    /usr/bin/python3 models/train_text.py --data "$TEXT_DIR" --train-n 4096 >/dev/null
  [ -f "$TEXT_DIR-full/fmnist_tokens_test_cls.safetensors" ] ||
    /usr/bin/python3 models/train_text.py --data "$TEXT_DIR-full" >/dev/null
  "$BUILD_DIR/bench/bench_text" --data "$TEXT_DIR" --threads "$THREADS" --eval 10000 --probes 50
  "$BUILD_DIR/bench/bench_text" --data "$TEXT_DIR" --threads 1 --eval 10000 \
    --models bert-prune --recovery 300 --lr 1e-3
  "$BUILD_DIR/bench/bench_text" --data "$TEXT_DIR-full" --threads 1 --eval 10000 \
    --models bert-prune --recovery 1000 --lr 1e-3
fi
