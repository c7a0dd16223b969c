#!/usr/bin/env bash
# The main job end to end on the embedded default: installs dependencies,
# builds compressd and compressctl, starts the server on a fresh data
# directory (SQLite + local files), uploads the shipped reference CNN,
# inspects it, analyses its Hessian sensitivity, quantizes it to 4 average
# weight bits with GPTQ using that analysis (calibration: Fashion-MNIST
# training images; evaluation: the 10k test set), prints the before/after
# table, downloads the artifacts and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/install-deps.sh
bash scripts/build.sh compressd compressctl
BIN=$ROOT/${BUILD_DIR:-build}
WORK=$(mktemp -d /tmp/compressd-demo.XXXXXX)
MODEL=${MODEL:-$ROOT/models/fmnist_cnn.pt}
[ -f "$MODEL" ] || MODEL=$ROOT/tests/fixtures/tiny_vit.pt

"$BIN/server/compressd" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --data_dir="$WORK/data" > "$WORK/server.out" 2> "$WORK/server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
# The server prints one line once it is SERVING.
for _ in $(seq 600); do
  grep -q "listening on port" "$WORK/server.out" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
PORT=$(awk '{print $5}' "$WORK/server.out" | tr -d ,)
METRICS=$(awk '{print $9}' "$WORK/server.out" | tr -d ,)
export COMPRESS_SERVER=127.0.0.1:$PORT
CTL=$BIN/client/compressctl
echo "== compressd on $COMPRESS_SERVER (metrics :$METRICS), data in $WORK/data"

echo "== upload $(basename "$MODEL")"
MODEL_ID=$("$CTL" --json model upload "$MODEL" | sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
"$CTL" model get "$MODEL_ID" | sed -n 1,20p
echo "== datasets"
"$CTL" data list
echo "== inspect on builtin:fashion-mnist/test"
"$CTL" inspect --model "$MODEL_ID" --data builtin:fashion-mnist/test --watch
echo "== analyze: per-layer Hessian sensitivity on 128 Fashion-MNIST training images"
"$CTL" analyze --model "$MODEL_ID" --data builtin:fashion-mnist/train --samples 128 \
  --batch 128 --probes 40 --eigen 1 --density --seed 1 --watch
ANALYZE_JOB=$("$CTL" --json job list --kind analyze | grep -o '"id":"job-[0-9a-f]*"' | sed -n 1p | cut -d'"' -f4)
# 40 probes leave the traces ±19-58% (the tolerance is 5%): a QUANTIZE job
# refuses such traces unless told (--allow-unconverged); their standard
# errors then decide which layers' Ω are resolved (README "Sensitivity
# hygiene").
echo "== quantize: 4 average weight bits, GPTQ, sensitivity from $ANALYZE_JOB, top-1 on the 10k test images"
"$CTL" quantize --model "$MODEL_ID" --data builtin:fashion-mnist/train --samples 256 \
  --eval builtin:fashion-mnist/test --bits 4 --gptq --sensitivity "$ANALYZE_JOB" \
  --allow-unconverged --seed 1 --watch
JOB=$("$CTL" --json job list --kind quantize | grep -o '"id":"job-[0-9a-f]*"' | sed -n 1p | cut -d'"' -f4)
echo "== artifacts of $JOB"
"$CTL" artifact list "$JOB"
"$CTL" artifact get "$JOB" -o "$WORK/artifacts"
ls -l "$WORK/artifacts"
echo "== metrics"
curl -s "http://127.0.0.1:$METRICS/metrics" | grep -E '^compressd_(jobs|queue|workers)' || true
echo "== done: artifacts in $WORK/artifacts"
