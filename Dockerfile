# compressd image.
#
#   docker build -t compressd:0.1.0 .                                 # CPU (default)
#   docker build --build-arg LIBTORCH=cuda -t compressd:0.1.0-cuda .  # GPU nodes
#   deploy/build-image.sh      # the same CPU image with buildah, no daemon
#                              # (what CI builds and tests: tests/deploy)
#
# Compilation goes through ccache in a cache mount (CCACHE_DIR); the build
# type and CCACHE_BASEDIR match scripts/build.sh, so deploy/build-image.sh
# can point CCACHE_DIR at the host's cache and reuse what CI compiled.
#
# LIBTORCH=debian (default): Debian 12's LibTorch 1.13 (CPU only), from the
# same install script developers and CI use.
# LIBTORCH=cuda: a LibTorch 2.x CUDA build (LIBTORCH_CUDA_URL, default
# 2.5.1+cu124; pin LIBTORCH_CUDA_SHA256), compiled with Debian's CUDA toolkit
# (`install-deps.sh --cuda-toolkit`) on hand for CMake; the image carries
# LibTorch's own CUDA libraries and needs the NVIDIA driver and container
# toolkit on the node. deploy/README.md says what was and was not verified.
#
# Both: a build stage on debian:bookworm, then a runtime stage with only the
# shared libraries (`install-deps.sh --runtime`), a non-root user, the data
# directory as a volume, gRPC (50051), plaintext health (50052) and metrics
# (9464) ports, and a HEALTHCHECK through `compressctl health`.
# Stages: build-deps (packages, LibTorch) -> build; runtime-deps (shared
# libraries, user) -> the image. The *-deps stages do not depend on the
# sources, so deploy/build-image.sh --prepare can build them while the host
# compiles. One build stage for both variants: buildah 1.28 skips stages
# named through an ARG in FROM, so the variant is a shell condition.
FROM debian:bookworm AS build-deps
ARG LIBTORCH=debian
# A current LibTorch 2.x CUDA distribution (the cxx11-ABI zip); pin the
# sha256 of the file you deploy for a reproducible build.
ARG LIBTORCH_CUDA_URL=https://download.pytorch.org/libtorch/cu124/libtorch-cxx11-abi-shared-with-deps-2.5.1%2Bcu124.zip
ARG LIBTORCH_CUDA_SHA256=
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh --build \
 && mkdir -p /opt/libtorch/lib \
 && if [ "$LIBTORCH" = cuda ]; then \
      bash scripts/install-deps.sh --cuda-toolkit \
      && python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
           "$LIBTORCH_CUDA_URL" /tmp/libtorch.zip \
      && { [ -z "$LIBTORCH_CUDA_SHA256" ] \
           || echo "$LIBTORCH_CUDA_SHA256  /tmp/libtorch.zip" | sha256sum -c -; } \
      && python3 -m zipfile -e /tmp/libtorch.zip /opt && rm /tmp/libtorch.zip; \
    fi

FROM build-deps AS build
ARG LIBTORCH=debian
COPY . .
ARG CCACHE_DIR=/root/.cache/ccache
ENV CCACHE_DIR=${CCACHE_DIR} CCACHE_BASEDIR=/src \
    COMPRESS_CMAKE_FLAGS="-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPRESS_BUILD_TESTS=OFF -DCOMPRESS_BUILD_BENCH=OFF"
RUN --mount=type=cache,id=compressd-ccache,target=/root/.cache/ccache \
    cmake -S . -B build $COMPRESS_CMAKE_FLAGS \
      $([ "$LIBTORCH" = cuda ] && echo -DCMAKE_PREFIX_PATH=/opt/libtorch -DCMAKE_BUILD_RPATH=/opt/libtorch/lib) \
 && ninja -C build compressd compressctl \
 && strip build/server/compressd build/client/compressctl

FROM debian:bookworm-slim AS runtime-deps
ARG LIBTORCH=debian
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime $([ "$LIBTORCH" = cuda ] && echo --no-libtorch) \
 && rm /tmp/install-deps.sh \
 && groupadd --system --gid 10001 compressd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/compressd compressd \
 && mkdir -p /var/lib/compressd && chown compressd:compressd /var/lib/compressd

FROM runtime-deps
# Empty for LIBTORCH=debian; LibTorch with its CUDA libraries for cuda.
COPY --from=build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build /src/build/server/compressd /src/build/client/compressctl /usr/local/bin/
USER compressd
VOLUME /var/lib/compressd
ENV COMPRESSD_DATA_DIR=/var/lib/compressd \
    COMPRESSD_LISTEN=0.0.0.0:50051 \
    COMPRESSD_HEALTH_LISTEN=0.0.0.0:50052 \
    COMPRESSD_METRICS_LISTEN=0.0.0.0:9464 \
    LD_LIBRARY_PATH=/opt/libtorch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50051 50052 9464
# The plaintext health-only port answers whether TLS is on or not.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["compressctl", "--server", "127.0.0.1:50052", "--timeout", "5", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/compressd"]
