# compressd image. Build: docker build -t compressd .
# Stage 1 builds with the same install script developers and CI use; stage 2
# carries only the runtime shared libraries, the binaries and the models.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCOMPRESS_BUILD_TESTS=OFF -DCOMPRESS_BUILD_BENCH=OFF \
 && ninja -C build compressd compressctl

FROM debian:bookworm-slim
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm /tmp/install-deps.sh \
 && useradd --system --uid 10001 --home-dir /var/lib/compressd compressd \
 && mkdir -p /var/lib/compressd && chown compressd /var/lib/compressd
COPY --from=build /src/build/server/compressd /src/build/client/compressctl /usr/local/bin/
USER compressd
VOLUME /var/lib/compressd
ENV COMPRESSD_DATA_DIR=/var/lib/compressd \
    COMPRESSD_LISTEN=0.0.0.0:50051 \
    COMPRESSD_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/compressd"]
