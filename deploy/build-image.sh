#!/usr/bin/env bash
# Builds the CPU image from the Dockerfile with buildah, without a Docker
# daemon or a registry: `buildah build --isolation chroot` (podman's and
# buildah's default OCI isolation need cgroup support this kind of machine
# lacks). Run as root.
#
#   deploy/build-image.sh [TAG]      # default localhost/compressd:dev
#   deploy/build-image.sh --prepare  # only the bases and the *-deps stages
#                                    # (packages; scripts/test.sh runs it in
#                                    # the background while the host compiles)
#
# Runs hold a lock (/var/tmp/compressd-build-image.lock): a build started
# while --prepare runs waits for it and reuses its layers (--layers).
#
# The Dockerfile's bases (debian:bookworm, debian:bookworm-slim) come from
# the local store; when absent they are made here with
# `mmdebstrap --variant=minbase bookworm` (Debian's own archive, no
# registry) and tagged under both names. The Dockerfile compiles with ccache
# in a cache mount; here CCACHE_DIR points at the host's ccache (a volume), so
# objects scripts/build.sh compiled are reused (the build type, flags and
# CCACHE_BASEDIR match). Set COMPRESS_IMAGE_CCACHE= (empty) to use the
# Dockerfile's own cache mount instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PREPARE=
if [ "${1:-}" = "--prepare" ]; then PREPARE=1; shift; fi
TAG=${1:-localhost/compressd:dev}
BASE=docker.io/library/debian
HOST_CCACHE=${COMPRESS_IMAGE_CCACHE-$(ccache --get-config cache_dir 2>/dev/null || true)}

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done

make_base() {
  local dir
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  echo "build-image: making $BASE:bookworm with mmdebstrap (a few minutes)"
  mmdebstrap --quiet --variant=minbase --mode=root bookworm "$dir/rootfs.tar" \
    http://deb.debian.org/debian
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$dir/rootfs.tar" /
  buildah config --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet "$ctr" "$BASE:bookworm" >/dev/null
  buildah rm "$ctr" >/dev/null
}

exec 9>/var/tmp/compressd-build-image.lock
flock 9

if ! buildah inspect --type image "$BASE:bookworm" >/dev/null 2>&1; then
  make_base
fi
if ! buildah inspect --type image "$BASE:bookworm-slim" >/dev/null 2>&1; then
  buildah tag "$BASE:bookworm" "$BASE:bookworm-slim"
fi

# Docker format: OCI images have no HEALTHCHECK.
args=(--isolation chroot --pull=never --layers --format docker)
if [ -n "$HOST_CCACHE" ]; then
  mkdir -p "$HOST_CCACHE"
  args+=(--volume "$HOST_CCACHE:/host-ccache" --build-arg CCACHE_DIR=/host-ccache)
fi
if [ -n "$PREPARE" ]; then
  for stage in build-deps runtime-deps; do
    echo "build-image: buildah build ${args[*]} --target $stage ."
    buildah build "${args[@]}" --target "$stage" .
  done
  exit 0
fi
echo "build-image: buildah build ${args[*]} -t $TAG ."
buildah build "${args[@]}" -t "$TAG" .
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$TAG"
