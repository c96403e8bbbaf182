# syntax=docker/dockerfile:1
# netscope-agent: the per-node DaemonSet binary. It loads a BPF program, so
# the build needs clang and the kernel UAPI headers, and libbpf (built from
# the vendored copy in libbpf-sys) links libelf and zlib dynamically.
#
# Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t netscope-agent:dev .
#
# The BPF object is compiled for the build's target architecture (the
# multiarch include path in netscope-bpf/build.rs); build on, or for, the
# nodes' architecture (docker buildx --platform linux/amd64,linux/arm64).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang libelf-dev zlib1g-dev pkg-config make libc6-dev linux-libc-dev \
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
    cargo build --release --locked -p netscope-agent \
 && install -D -m 0755 target/release/netscope-agent /out/netscope-agent

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="netscope-agent" \
      org.opencontainers.image.description="netscope per-node agent: counts pod traffic with eBPF and reports it to the aggregator" \
      org.opencontainers.image.source="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.licenses="Apache-2.0"
# libelf and zlib for libbpf; nothing else (conntrack and rtnetlink are
# spoken directly over netlink).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/netscope-agent /usr/local/bin/netscope-agent
# Root in the container: Kubernetes grants the chart's added capabilities
# (BPF, NET_ADMIN, PERFMON, SYS_RESOURCE) to uid 0 only.
USER 0:0
EXPOSE 6060
ENTRYPOINT ["/usr/local/bin/netscope-agent"]
