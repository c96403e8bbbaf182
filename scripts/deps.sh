#!/usr/bin/env bash
# Installs the system packages that netscope's build, tests and demo need.
# Debian/Ubuntu only; says what it installs, and fails clearly elsewhere.
set -euo pipefail

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "netscope needs Linux (found $(uname -s))."
command -v apt-get >/dev/null 2>&1 || die "no apt-get: only Debian and Ubuntu are supported by 'make deps'. Install by hand: clang libelf-dev zlib1g-dev pkg-config iproute2 nftables ethtool conntrack iputils-ping prometheus qemu-system-x86 busybox-static cpio binutils g++ xz-utils debian-archive-keyring npm unzip python3-venv openssl podman runc iperf3 bpftool."

# Debian package -> a file that proves it is installed.
declare -A PKGS=(
  [clang]=/usr/bin/clang
  [llvm]=/usr/bin/llvm-strip
  [libelf-dev]=/usr/include/libelf.h
  [zlib1g-dev]=/usr/include/zlib.h
  [pkg-config]=/usr/bin/pkg-config
  [make]=/usr/bin/make
  [iproute2]=/usr/sbin/ip
  [nftables]=/usr/sbin/nft
  [ethtool]=/usr/sbin/ethtool
  [conntrack]=/usr/sbin/conntrack
  [iputils-ping]=/usr/bin/ping
  [prometheus]=/usr/bin/prometheus
  [curl]=/usr/bin/curl
  [openssl]=/usr/bin/openssl
  [util-linux]=/usr/bin/nsenter
  [python3]=/usr/bin/python3
  [python3-venv]=/usr/share/doc/python3-venv
  [npm]=/usr/share/doc/npm
  [unzip]=/usr/bin/unzip
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [busybox-static]=/bin/busybox
  [cpio]=/usr/bin/cpio
  [binutils]=/usr/bin/objcopy
  [xz-utils]=/usr/bin/xz
  [debian-archive-keyring]=/usr/share/keyrings/debian-archive-keyring.gpg
  # make images / test-images: podman (no daemon; joins existing network
  # namespaces), runc (works on cgroup v1, hybrid and v2 hosts).
  [podman]=/usr/bin/podman
  [runc]=/usr/sbin/runc
  # make bench: the real-traffic overhead benchmark (benches/real_traffic.py).
  [iperf3]=/usr/bin/iperf3
  [bpftool]=/usr/sbin/bpftool
  # libFuzzer (make fuzz) is C++.
  [g++]=/usr/bin/g++
)
# Multiarch UAPI headers (asm/types.h) for the BPF C build.
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
PKGS[libc6-dev]=/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/asm/types.h
PKGS[linux-libc-dev]=/usr/include/linux/bpf.h

missing=()
for p in "${!PKGS[@]}"; do
  [ -e "${PKGS[$p]}" ] && continue
  # npm may come with a Node.js installed some other way: that one will do.
  [ "$p" = npm ] && command -v npm >/dev/null 2>&1 && continue
  missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}) and not root: run 'sudo make deps'."
  say "installing for $arch: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends ${missing[*]} || die "apt-get install failed for: ${missing[*]}"
else
  say "system packages present"
fi

# bpffs, for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    say "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf || say "warning: could not mount bpffs"
  fi
fi
say "ok"
