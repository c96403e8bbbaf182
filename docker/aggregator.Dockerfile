# syntax=docker/dockerfile:1
# netscope-aggregator: the Deployment binary. Pure Rust (rustls with ring;
# the only C is ring's, built with the image's gcc): no libbpf, no clang.
#
# Build from the repository root:
#   docker build -f docker/aggregator.Dockerfile -t netscope-aggregator:dev .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo needs every member's manifest.
COPY Cargo.toml Cargo.lock ./
COPY netscope netscope
COPY netscope-bpf netscope-bpf
COPY bins bins
COPY examples examples
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p netscope-aggregator \
 && install -D -m 0755 target/release/netscope-aggregator /out/netscope-aggregator

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="netscope-aggregator" \
      org.opencontainers.image.description="netscope aggregator: counts every byte once, resolves pods and zones, exports Prometheus metrics and flow logs" \
      org.opencontainers.image.source="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 netscope \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin netscope
COPY --from=build /out/netscope-aggregator /usr/local/bin/netscope-aggregator
# Non-root; the chart's runAsUser is the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/netscope-aggregator"]
