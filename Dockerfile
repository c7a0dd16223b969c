# compressd image.
#
#   docker build -t compressd:0.1.0 .                                 # CPU (default)
#   docker build --build-arg LIBTORCH=cuda -t compressd:0.1.0-cuda .  # GPU nodes
#
# LIBTORCH=debian (default): Debian 12's LibTorch 1.13 (CPU only), from the
# same install script developers and CI use.
# LIBTORCH=cuda: the CUDA 11.7 build of LibTorch 1.13.1 from LIBTORCH_CUDA_URL
# (pin LIBTORCH_CUDA_SHA256 for a reproducible build), compiled against
# Debian's CUDA toolkit (`install-deps.sh --cuda-toolkit`); the image carries
# LibTorch's own CUDA libraries and needs the NVIDIA driver and container
# toolkit on the node. deploy/README.md says what was and was not verified.
#
# Both: a build stage on debian:bookworm, then a runtime stage with only the
# shared libraries (`install-deps.sh --runtime`), a non-root user, the data
# directory as a volume, gRPC (50051), plaintext health (50052) and metrics
# (9464) ports, and a HEALTHCHECK through `compressctl health`.
ARG LIBTORCH=debian

FROM debian:bookworm AS build-base
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh
COPY . .
ENV COMPRESS_CMAKE_FLAGS="-G Ninja -DCMAKE_BUILD_TYPE=Release -DCOMPRESS_BUILD_TESTS=OFF -DCOMPRESS_BUILD_BENCH=OFF"

FROM build-base AS build-debian
RUN cmake -S . -B build $COMPRESS_CMAKE_FLAGS \
 && ninja -C build compressd compressctl \
 && mkdir -p /opt/libtorch/lib

FROM build-base AS build-cuda
ARG LIBTORCH_CUDA_URL=https://download.pytorch.org/libtorch/cu117/libtorch-cxx11-abi-shared-with-deps-1.13.1%2Bcu117.zip
ARG LIBTORCH_CUDA_SHA256=
RUN bash scripts/install-deps.sh --cuda-toolkit
ADD ${LIBTORCH_CUDA_URL} /tmp/libtorch.zip
RUN if [ -n "$LIBTORCH_CUDA_SHA256" ]; then \
      echo "$LIBTORCH_CUDA_SHA256  /tmp/libtorch.zip" | sha256sum -c -; fi \
 && python3 -m zipfile -e /tmp/libtorch.zip /opt && rm /tmp/libtorch.zip \
 && cmake -S . -B build $COMPRESS_CMAKE_FLAGS -DCMAKE_PREFIX_PATH=/opt/libtorch \
      -DCMAKE_BUILD_RPATH=/opt/libtorch/lib \
 && ninja -C build compressd compressctl

FROM build-${LIBTORCH} AS build

FROM debian:bookworm-slim
ARG LIBTORCH
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime $([ "$LIBTORCH" = cuda ] && echo --no-libtorch) \
 && rm /tmp/install-deps.sh \
 && groupadd --system --gid 10001 compressd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/compressd compressd \
 && mkdir -p /var/lib/compressd && chown compressd:compressd /var/lib/compressd
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
