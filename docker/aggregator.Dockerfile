# syntax=docker/dockerfile:1
# netscope-aggregator: the Deployment binary. Pure Rust (rustls with ring;
# the only C is ring's, built with the image's gcc): no libbpf, no clang.
# The runtime image (FROM scratch) holds the binary, the few glibc
# libraries `ldd` names (docker/rootfs.sh) and no shell; it runs as the
# non-root uid 65532.
#
# With a registry (what the release workflow does), from the repository root:
#   docker build -f docker/aggregator.Dockerfile -t netscope-aggregator:dev .
# Without one: make images (scripts/images.sh; see agent.Dockerfile).

ARG RUST_VERSION=1.95
ARG BUILDER=toolchain

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config \
 && rm -rf /var/lib/apt/lists/*

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ -d prebuilt/rootfs ]; then \
      cp -a prebuilt/rootfs /rootfs; \
    else \
      cargo build --release --locked -p netscope-aggregator \
      && sh docker/rootfs.sh target/release/netscope-aggregator /rootfs; \
    fi

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="netscope-aggregator" \
      org.opencontainers.image.description="netscope aggregator: counts every byte once, resolves pods and zones, exports Prometheus metrics and flow logs" \
      org.opencontainers.image.source="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.url="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /rootfs/ /
# Non-root; the chart's runAsUser is the same uid.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/netscope-aggregator"]
