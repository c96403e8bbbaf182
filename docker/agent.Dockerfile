# syntax=docker/dockerfile:1
# netscope-agent: the per-node DaemonSet binary. It loads a BPF program, so
# the build needs clang and the kernel UAPI headers; libbpf (built from the
# vendored copy in libbpf-sys) links libelf and zlib dynamically, and the
# runtime image (FROM scratch) holds exactly the shared libraries `ldd`
# names (docker/rootfs.sh) and no shell.
#
# With a registry (what the release workflow does), from the repository root:
#   docker build -f docker/agent.Dockerfile -t netscope-agent:dev .
# Without one (make images: podman, Debian packages only), the build stage
# runs in a local busybox image (BUILDER=...) on a context that holds the
# host-built rootfs under prebuilt/rootfs; see scripts/images.sh.
#
# The BPF object is compiled for the build's target architecture (the
# multiarch include path in netscope-bpf/build.rs); build on, or for, the
# nodes' architecture (docker buildx --platform linux/amd64,linux/arm64).

ARG RUST_VERSION=1.95
# The stage the binary is built in: "toolchain" (below) compiles it;
# scripts/images.sh passes a local image that only copies prebuilt/rootfs.
ARG BUILDER=toolchain

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang libelf-dev zlib1g-dev pkg-config make libc6-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*

FROM ${BUILDER} AS build
WORKDIR /src
# The whole workspace (cargo needs every member's manifest; the
# .dockerignore next to this file lets through only what it needs), or,
# for a local build, prebuilt/rootfs.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ -d prebuilt/rootfs ]; then \
      cp -a prebuilt/rootfs /rootfs; \
    else \
      cargo build --release --locked -p netscope-agent \
      && sh docker/rootfs.sh target/release/netscope-agent /rootfs; \
    fi

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="netscope-agent" \
      org.opencontainers.image.description="netscope per-node agent: counts pod traffic with eBPF and reports it to the aggregator" \
      org.opencontainers.image.source="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.url="https://github.com/netscope-dev/netscope" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /rootfs/ /
# Root in the container: Kubernetes grants the chart's added capabilities
# (BPF, NET_ADMIN, PERFMON, SYS_RESOURCE) to uid 0 only; the chart drops
# every other capability and makes the root filesystem read-only.
# hadolint ignore=DL3002
USER 0:0
EXPOSE 6060
ENTRYPOINT ["/usr/local/bin/netscope-agent"]
