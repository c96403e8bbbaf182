#!/usr/bin/env bash
# Builds, pushes and tests netscope's container images with podman, from
# Debian's packages only (no registry needed):
#
#   scripts/images.sh build   build localhost/netscope-agent:VERSION and
#                             localhost/netscope-aggregator:VERSION
#                             (make images; REGISTRY=host/path also tags
#                             them REGISTRY/netscope-*:VERSION and pushes)
#   scripts/images.sh test    build the images again from the debug binaries
#                             make test has built (tag :test, so CI does not
#                             compile a release build too), and run the demo's
#                             exactness check through them: the agent image in every node namespace
#                             of the simulated cluster with exactly the
#                             chart's capabilities, the aggregator image on the
#                             underlay, a real Prometheus, and the Grafana
#                             dashboard's every query; then check that nothing
#                             is left and the root namespace is unchanged
#                             (make test-images, part of make test)
#
# Why podman: it runs a container in an existing network namespace
# (--network ns:/run/netns/NAME) without a daemon, so it adds no bridge,
# iptables rule or ip_forward change to the root namespace, and it knows
# CAP_BPF and CAP_PERFMON (Debian's docker.io 20.10 does not). Its storage
# and configuration live in .tools/podman/ (gitignored), not in /var/lib.
#
# The Dockerfiles are the release's (docker/*.Dockerfile). Without a
# registry the Rust toolchain image cannot be pulled, so the binaries are
# built on this machine (cargo build --release), laid out with
# docker/rootfs.sh into a staged build context, and the Dockerfile's build
# stage runs in a local busybox image imported from Debian's busybox-static
# (BUILDER build arg); the runtime stage is FROM scratch either way.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=$ROOT/.tools
PODDIR=$TOOLS/podman
WORK=$TOOLS/images
CARGO=${CARGO:-cargo}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then REVISION=$REVISION-dirty; fi
BUILDER=localhost/netscope-builder-busybox:1
PREFIX=netscope-test-img
say() { printf 'images: %s\n' "$*"; }
die() { printf 'images: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "podman here runs as root (network namespaces, BPF): run as root"
command -v podman >/dev/null || die "podman is needed (apt-get install podman runc, or make deps)"
command -v runc >/dev/null || die "runc is needed (apt-get install runc, or make deps)"

# --- podman's configuration, all under .tools/podman --------------------------
mkdir -p "$PODDIR" "$WORK"
# runc with cgroupfs works on cgroup v1, hybrid and v2 hosts (crun refuses
# hybrid ones). The ulimits are this shell's: a container that asks for more
# than its parent has fails where CAP_SYS_RESOURCE is missing (as in CI
# sandboxes); conmon caps processes at 32768.
nofile=$(ulimit -Hn)
# The seccomp profile: podman's default, with the two rules containerd's
# RuntimeDefault profile (what the chart's seccompProfile: RuntimeDefault
# means on a containerd node) has and podman 4.3's lacks: bpf() for holders
# of CAP_BPF and perf_event_open() for holders of CAP_PERFMON. Podman's
# allows both only with CAP_SYS_ADMIN, which the chart does not grant.
python3 - /usr/share/containers/seccomp.json "$PODDIR/seccomp.json" <<'PYEOF'
import json, sys
prof = json.load(open(sys.argv[1]))
extra = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
out = []
for rule in prof["syscalls"]:
    names = rule["names"]
    moved = [n for n in names if n in extra]
    if moved and rule["action"] == "SCMP_ACT_ERRNO" and "CAP_SYS_ADMIN" in rule.get("excludes", {}).get("caps", []):
        rest = dict(rule, names=[n for n in names if n not in extra])
        if rest["names"]:
            out.append(rest)
        for n in moved:
            out.append(dict(rule, names=[n], excludes=dict(rule["excludes"], caps=["CAP_SYS_ADMIN", extra[n]])))
            out.append({"names": [n], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "", "includes": {"caps": [extra[n]]}, "excludes": {}})
        continue
    out.append(rule)
if sum(1 for r in out if r.get("includes", {}).get("caps") in (["CAP_BPF"], ["CAP_PERFMON"])) != 2:
    sys.exit(f"images: {sys.argv[1]} does not have the expected bpf/perf_event_open rules")
prof["syscalls"] = out
json.dump(prof, open(sys.argv[2], "w"), indent=1)
PYEOF
cat >"$PODDIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
seccomp_profile = "$PODDIR/seccomp.json"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODDIR/events.log"
EOF
cat >"$PODDIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODDIR/storage"
runroot = "$PODDIR/run"
EOF
export CONTAINERS_CONF=$PODDIR/containers.conf CONTAINERS_STORAGE_CONF=$PODDIR/storage.conf
# No registries: short names never resolve to a remote one.
export CONTAINERS_REGISTRIES_CONF=$PODDIR/registries.conf
printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' >"$CONTAINERS_REGISTRIES_CONF"

TAG=$VERSION
image_name() { echo "localhost/$1:$TAG"; }

build() {
  # The build stage's base: busybox (sh, cp) from Debian's busybox-static.
  if ! podman image exists "$BUILDER"; then
    [ -x /bin/busybox ] || die "/bin/busybox is needed (apt-get install busybox-static, or make deps)"
    say "importing $BUILDER from /bin/busybox ($(/bin/busybox | head -1 | cut -c1-40))"
    local bb=$WORK/busybox-root
    rm -rf "$bb" && mkdir -p "$bb/bin"
    cp /bin/busybox "$bb/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$bb/bin/$a"; done
    tar -C "$bb" -cf "$WORK/busybox.tar" .
    podman import --quiet "$WORK/busybox.tar" "$BUILDER" >/dev/null
    rm -rf "$bb" "$WORK/busybox.tar"
  fi
  if [ -z "${NETSCOPE_IMAGES_BINDIR:-}" ]; then
    say "cargo build --release -p netscope-agent -p netscope-aggregator"
    "$CARGO" build --release --locked -p netscope-agent -p netscope-aggregator
  fi
  local bindir=${NETSCOPE_IMAGES_BINDIR:-$TARGET/release}
  local created
  created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for bin in netscope-agent netscope-aggregator; do
    local df=docker/${bin#netscope-}.Dockerfile ctx=$WORK/context-$bin
    [ -x "$bindir/$bin" ] || die "$bindir/$bin is not built"
    rm -rf "$ctx" && mkdir -p "$ctx/prebuilt"
    sh docker/rootfs.sh "$bindir/$bin" "$ctx/prebuilt/rootfs" >/dev/null
    say "building $(image_name "$bin") from $df (binary: $bindir/$bin, revision $REVISION)"
    # chroot isolation: the build's RUN needs no network namespace of its own.
    podman build --quiet --isolation chroot --file "$df" \
      --build-arg "BUILDER=$BUILDER" --build-arg "VERSION=$VERSION" \
      --build-arg "REVISION=$REVISION" --build-arg "CREATED=$created" \
      --tag "$(image_name "$bin")" "$ctx" >/dev/null
    rm -rf "$ctx"
    say "  $(podman image inspect --format '{{.Size}} bytes, user {{.Config.User}}, version {{index .Labels "org.opencontainers.image.version"}}, revision {{index .Labels "org.opencontainers.image.revision"}}' "$(image_name "$bin")")"
    if [ -n "${REGISTRY:-}" ] && [ "$TAG" = "$VERSION" ]; then
      local remote=${REGISTRY%/}/$bin:$VERSION
      podman tag "$(image_name "$bin")" "$remote"
      say "pushing $remote"
      podman push "$remote"
    fi
  done
  # Layers of replaced builds.
  podman image prune --force >/dev/null
}

# The root namespace, as far as a container engine could change it.
root_state() {
  ip -o link show | sed 's/^[0-9]*: //; s/ state .*//'
  ip -o addr show | awk '{print $2, $3, $4}'
  ip route show table all
  ip -6 route show table all 2>/dev/null | grep -v '^local\|^multicast\|^anycast' || true
  sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  nft list ruleset 2>/dev/null || true
  if command -v iptables-save >/dev/null; then iptables-save 2>/dev/null | grep -v '^#' || true; fi
}

test_images() {
  local agent aggregator caps
  agent=$(image_name netscope-agent)
  aggregator=$(image_name netscope-aggregator)
  podman image exists "$agent" && podman image exists "$aggregator" || die "build the images first (make images)"
  local demo=$TARGET/debug/examples/demo
  [ -x "$demo" ] || die "$demo is not built (cargo build -p netscope-examples --example demo)"
  # Exactly the chart's capability set: the default rendering's agent.
  local helm=$TOOLS/helm py=$TOOLS/venv/bin/python
  [ -x "$helm" ] && [ -x "$py" ] || die "Helm and the venv in .tools/ are needed (make test-helm installs them)"
  caps=$("$helm" template netscope charts/netscope --namespace netscope-system --show-only templates/agent-daemonset.yaml \
    | "$py" -c 'import sys, yaml; d = yaml.safe_load(sys.stdin); print(",".join(d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]))')
  [ -n "$caps" ] || die "no capabilities in the chart's agent"
  say "the chart's agent capabilities: $caps"
  local before after out
  before=$(root_state)
  out=$WORK/test.log
  say "demo --verify through $agent (6 node namespaces) and $aggregator (underlay), Prometheus and the dashboard"
  set +e
  "$demo" --duration "${NETSCOPE_IMAGES_DURATION:-20s}" --verify --exit --attach-mode auto --prefix "$PREFIX" \
    --agent-image "$agent" --aggregator-image "$aggregator" --engine podman --agent-caps "$caps" \
    --metrics-addr 127.0.0.1:19480 --prometheus 127.0.0.1:19481 \
    --check-dashboard charts/netscope/dashboards/netscope.json >"$out" 2>&1
  local rc=$?
  set -e
  cat "$out"
  local fails=0
  [ $rc -eq 0 ] || { say "FAIL: the demo exited with $rc"; fails=$((fails + 1)); }
  grep -q "all equal to the byte" "$out" || { say "FAIL: no exactness summary"; fails=$((fails + 1)); }
  grep -q "every one with data: true" "$out" || { say "FAIL: the dashboard check did not pass"; fails=$((fails + 1)); }
  # Nothing left: containers, namespaces, root namespace changes.
  local left
  left=$(podman ps --all --format '{{.Names}}' | grep "^$PREFIX" || true)
  if [ -n "$left" ]; then
    say "FAIL: containers left: $left"; fails=$((fails + 1))
    echo "$left" | xargs -r podman rm --force >/dev/null
  fi
  if ip netns list | grep -q "^$PREFIX"; then say "FAIL: namespaces left: $(ip netns list | grep "^$PREFIX")"; fails=$((fails + 1)); fi
  after=$(root_state)
  if [ "$before" != "$after" ]; then
    say "FAIL: the root namespace changed:"; diff <(echo "$before") <(echo "$after") || true; fails=$((fails + 1))
  else
    say "ok: the root namespace is as before (links, addresses, routes, forwarding, nftables/iptables)"
  fi
  [ $fails -eq 0 ] || die "$fails check(s) failed"
  say "ok: the demo's exactness check and the dashboard passed through both images"
}

case ${1:-} in
  build) build ;;
  test)
    TAG=test
    NETSCOPE_IMAGES_BINDIR=${NETSCOPE_IMAGES_BINDIR:-$TARGET/debug}
    build
    test_images ;;
  *) echo "usage: scripts/images.sh build|test" >&2; exit 2 ;;
esac
