#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Boots Debian's stock Linux 6.1 (bookworm's linux-image-amd64) in qemu
# under TCG and runs netscope's real capture_local example inside it (see
# tests/kernel61/init for what the VM does). Writes the VM's report to
# $OUT/results.log ("K61 <TAG> ..." lines) and the kernel console to
# $OUT/console.log. The assertions live in netscope-bpf/tests/kernel61.rs,
# which calls this script; run it alone to debug the VM.
#
# Usage: tests/kernel61/run.sh [CAPTURE_LOCAL_BINARY [PACKETS_TEST_BINARY]]
#   default binary: $CARGO_TARGET_DIR (or ./target)/debug/examples/capture_local
#   PACKETS_TEST_BINARY: the built netscope-bpf/tests/packets.rs harness
#   (target/debug/deps/packets-<hash>); when given, the VM also runs the
#   BPF_PROG_TEST_RUN packet tests on 6.1.
# Environment:
#   K61_OUT       output directory (default: <target>/kernel61)
#   K61_CACHE     kernel cache (default: <repo>/.tools/kernel61, gitignored)
#   K61_TIMEOUT   seconds before the VM is killed (default 300)
#
# Never installs the kernel on the host: the package is only unpacked.
# Touches no host network configuration. Exits non-zero, loudly, when a
# tool is missing or the VM does not report completion.
set -euo pipefail

die() { printf 'kernel61: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'kernel61: %s\n' "$*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${1:-$target/debug/examples/capture_local}
packets=${2:-}
out=${K61_OUT:-$target/kernel61}
cache=${K61_CACHE:-$repo/.tools/kernel61}
timeout_s=${K61_TIMEOUT:-300}

# Host tools (scripts/deps.sh installs them). The iproute2, nftables,
# ethtool and busybox binaries are copied into the VM with their libraries.
need=(qemu-system-x86_64 cpio apt-get apt-cache dpkg-deb objcopy ldd timeout)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
declare -A vm_bins=(
  [/usr/sbin/ip]=iproute2 [/usr/sbin/tc]=iproute2 [/usr/sbin/nft]=nftables
  [/usr/sbin/ethtool]=ethtool [/bin/busybox]=busybox-static
)
for b in "${!vm_bins[@]}"; do [ -x "$b" ] || missing+=("$b (${vm_bins[$b]})"); done
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]}. Run 'make deps' (or set NETSCOPE_SKIP_VM=1 to skip the VM test)."
# ldd fails on a static binary: busybox must need no libraries in the VM.
if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is not the static build: install busybox-static"; fi
[ -x "$bin" ] || die "no capture_local binary at $bin: run 'cargo build -p netscope-examples --example capture_local' first"
[ -z "$packets" ] || [ -x "$packets" ] || die "no packet test binary at $packets"

# 1. The kernel: the package linux-image-amd64 depends on, cached unpacked
# (dpkg-deb's data archive, partly).
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64: run 'apt-get update' (this needs Debian's main archive, e.g. bookworm)"
kdir=$cache/$pkg
if [ ! -f "$kdir/.unpacked" ]; then
  say "fetching $pkg (apt-get download; not installed)"
  rm -rf "$kdir" && mkdir -p "$kdir"
  # apt's sandbox user cannot write here; the warning about that is harmless.
  if ! (cd "$kdir" && apt-get download -q "$pkg") >"$kdir/download.log" 2>&1; then
    cat "$kdir/download.log" >&2
    die "apt-get download $pkg failed"
  fi
  grep -v 'unsandboxed' "$kdir/download.log" >&2 || true
  rm -f "$kdir/download.log"
  # Only the kernel image and the module trees the VM can need (the whole
  # package unpacks to 400 MB).
  mkdir -p "$kdir/root"
  dpkg-deb --fsys-tarfile "$kdir"/*.deb | tar -x -C "$kdir/root" --wildcards \
    './boot/vmlinuz-*' './lib/modules/*/kernel/net/*' './lib/modules/*/kernel/lib/*' \
    './lib/modules/*/kernel/crypto/*' './lib/modules/*/kernel/drivers/net/veth.ko' \
    || die "unpacking $pkg failed"
  rm -f "$kdir"/*.deb
  touch "$kdir/.unpacked"
fi
vmlinuz=$(ls "$kdir"/root/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
case $kver in 6.1.*) ;; *) die "expected a 6.1 kernel from $pkg, got $kver" ;; esac
moddir=$kdir/root/lib/modules/$kver/kernel

# 2. The initramfs.
rm -rf "$out" && mkdir -p "$out"
root=$out/initramfs
mkdir -p "$root"/{bin,usr/sbin,lib/x86_64-linux-gnu,lib64,modules,netscope,etc}

copy_with_libs() { # binary, destination inside the initramfs
  install -m 0755 "$1" "$root$2"
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}
install -m 0755 /bin/busybox "$root/bin/busybox"
for b in ip tc nft ethtool; do copy_with_libs "/usr/sbin/$b" "/usr/sbin/$b"; done
# The real example, debug info stripped (the debug build is large).
objcopy --strip-debug "$bin" "$out/capture_local"
copy_with_libs "$out/capture_local" /netscope/capture_local
rm -f "$out/capture_local"
if [ -n "$packets" ]; then
  objcopy --strip-debug "$packets" "$out/packets"
  copy_with_libs "$out/packets" /netscope/packets
  rm -f "$out/packets"
fi
install -m 0755 "$here/init" "$root/init"

# Modules in load order, with their dependencies (read from .modinfo; the
# unpacked package has no modules.dep). nft_objref serves the named
# counters of the reference. libcrc32c needs a crc32c
# implementation first (a softdep).
modinfo_field() { objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n "s/^$2=//p"; }
order=()
add_module() {
  local m=$1 f d
  for d in "${order[@]}"; do [ "$d" = "$m" ] && return 0; done
  f=$(find "$moddir" -name "$m.ko" | head -n1)
  [ -n "$f" ] || die "module $m not in $pkg"
  [ "$m" = libcrc32c ] && add_module crc32c_generic
  for d in $(modinfo_field "$f" depends | tr ',' ' '); do add_module "$d"; done
  cp "$f" "$root/modules/$m.ko"
  order+=("$m")
}
for m in veth sch_ingress cls_bpf nf_tables nft_objref; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/modules/order"

(cd "$root" && find . | cpio -o -H newc --quiet) >"$out/initramfs.cpio"
rm -rf "$root"
say "kernel $kver; initramfs $(du -h "$out/initramfs.cpio" | cut -f1) with modules: ${order[*]}"

# 3. Boot. ttyS0: kernel console; ttyS1: the report.
start=$(date +%s.%N)
rc=0
timeout "$timeout_s" qemu-system-x86_64 \
  -accel tcg -cpu max -smp 2 -m 1G \
  -nodefaults -display none -no-reboot -net none \
  -kernel "$vmlinuz" -initrd "$out/initramfs.cpio" \
  -append "console=ttyS0 panic=-1 loglevel=4 rdinit=/init" \
  -serial "file:$out/console.log" -serial "file:$out/results.log" || rc=$?
end=$(date +%s.%N)
rm -f "$out/initramfs.cpio"
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
echo "K61 HOST_BOOT_SECONDS $secs" >>"$out/results.log"
say "VM ran ${secs}s (qemu exit $rc); report: $out/results.log, console: $out/console.log"
[ "$rc" -eq 0 ] || die "qemu failed or timed out after ${timeout_s}s (exit $rc); see $out/console.log"
grep -q '^K61 DONE ok' "$out/results.log" || {
  grep -E '^K61 (FAIL|DONE)' "$out/results.log" >&2 || true
  tail -n 30 "$out/console.log" >&2
  die "the VM did not report success"
}
