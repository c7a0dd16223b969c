#!/usr/bin/env bash
# The container image, built and run without a Docker daemon (issue 17):
# deploy/build-image.sh builds the CPU image from the Dockerfile with
# buildah; then compressd runs from the image (`buildah run --isolation
# chroot`, which shares the host's loopback), answers `compressctl health`
# on its plaintext health port, and runs an INSPECT job of the reference
# CNN submitted with the image's own compressctl. Checks that the image runs
# as a non-root user and that the reported parameter count is the one
# models/reference.json records; prints the image size and the build time.
# Needs root, buildah and mmdebstrap (scripts/install-deps.sh).
# COMPRESS_IMAGE_TAG (default localhost/compressd:test) names the image.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
TAG=${COMPRESS_IMAGE_TAG:-localhost/compressd:test}

fail() { echo "image_test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (buildah --isolation chroot)"

started=$(date +%s)
# COMPRESS_IMAGE_SKIP_BUILD=1: test an image already in the local store.
if [ "${COMPRESS_IMAGE_SKIP_BUILD:-0}" != 1 ]; then deploy/build-image.sh "$TAG"; fi
build_s=$(( $(date +%s) - started ))

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$TAG")
[ "$user" = compressd ] || fail "image user is '$user', want compressd"
size=$(buildah inspect --type image --format '{{.Size}}' "$TAG" 2>/dev/null || true)
[ -n "$size" ] || size=$(buildah images --format '{{.Size}}' "$TAG")

ctr=$(buildah from --pull-never "$TAG")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    pkill -TERM -f "compressd --listen 127.0.0.1:$grpc_port" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Three free loopback ports.
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port); health_port=$(free_port); metrics_port=$(free_port)
in_image() { buildah run --isolation chroot "$ctr" -- "$@"; }

uid=$(in_image id -u)
[ "$uid" != 0 ] || fail "the image runs as root"

buildah copy --quiet --chown 10001:10001 "$ctr" models/fmnist_cnn.pt /tmp/fmnist_cnn.pt
buildah run --isolation chroot "$ctr" -- compressd --listen "127.0.0.1:$grpc_port" \
  --health_listen "127.0.0.1:$health_port" --metrics_listen "127.0.0.1:$metrics_port" \
  --data_dir /var/lib/compressd --cpu_workers 1 > /tmp/image_test.server.log 2>&1 &
server_pid=$!

healthy=
for _ in $(seq 1 120); do
  if in_image compressctl --server "127.0.0.1:$health_port" --timeout 5 health >/dev/null 2>&1; then
    healthy=1; break
  fi
  kill -0 "$server_pid" 2>/dev/null || { cat /tmp/image_test.server.log >&2; fail "compressd exited"; }
  sleep 1
done
[ -n "$healthy" ] || { cat /tmp/image_test.server.log >&2; fail "no health answer in 120 s"; }
in_image compressctl --server "127.0.0.1:$health_port" --timeout 5 health

ctl() { in_image compressctl --server "127.0.0.1:$grpc_port" --timeout 300 "$@"; }
model=$(ctl --json model upload /tmp/fmnist_cnn.pt | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
job=$(ctl --json inspect --model "$model" --data builtin:fashion-mnist/test | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
ctl job watch "$job" > /dev/null || fail "INSPECT job $job did not succeed"
ctl --json job get "$job" > /tmp/image_test.inspect.json
want=$(/usr/bin/python3 -c 'import json; print(json.load(open("models/reference.json"))["fmnist_cnn.pt"]["params"])')
got=$(/usr/bin/python3 - /tmp/image_test.inspect.json <<'EOF'
import json, sys
def find(d):
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("numParameters", "num_parameters"):
                return str(v)
            r = find(v)
            if r is not None:
                return r
    if isinstance(d, list):
        for v in d:
            r = find(v)
            if r is not None:
                return r
    return None
print(find(json.load(open(sys.argv[1]))))
EOF
)
[ "$got" = "$want" ] || fail "INSPECT from the image counted $got parameters, models/reference.json says $want"

echo "image_test: image $TAG built in ${build_s} s, size $size, user $user (uid $uid)"
echo "image_test: health OK on 127.0.0.1:$health_port; INSPECT of the reference CNN: $got parameters (reference.json: $want)"
