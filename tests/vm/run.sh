#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Boots one of Debian's stock kernels in qemu under TCG and runs netscope's
# real capture_local example inside it (see tests/vm/init for what the VM
# does). Writes the VM's report to $OUT/results.log ("VM <TAG> ..." lines)
# and the kernel console to $OUT/console.log. The assertions live in
# netscope-bpf/tests/vm_kernels.rs, which calls this script once per kernel;
# run it alone to debug a VM.
#
# Usage: tests/vm/run.sh KERNEL [CAPTURE_LOCAL_BINARY [PACKETS_TEST_BINARY]]
#   KERNEL: 5.10 (Debian 11 bullseye), 6.1 (Debian 12 bookworm) or 6.12
#   (Debian 13 trixie): the newest linux-image-amd64 of that suite and its
#   security suite.
#   default binary: $CARGO_TARGET_DIR (or ./target)/debug/examples/capture_local
#   PACKETS_TEST_BINARY: the built netscope-bpf/tests/packets.rs harness
#   (target/debug/deps/packets-<hash>); when given, the VM also runs the
#   BPF_PROG_TEST_RUN packet tests.
# Environment:
#   VM_OUT       output directory (default: <target>/vm/<KERNEL>)
#   VM_CACHE     kernel cache (default: <repo>/.tools/vm-kernels, gitignored)
#   VM_TIMEOUT   seconds before the VM is killed (default 400)
#
# Each kernel is fetched once: `apt-get download` with a private apt state,
# cache and source list (never the host's), from the Debian mirror the
# host's own apt configuration names, then unpacked (image and the module
# trees the VM can need) into the cache. Delete the kernel's cache directory
# to fetch a newer point release. Never installs a kernel on the host.
# Touches no host network configuration. Exits non-zero, loudly, when a tool
# is missing or the VM does not report completion.
set -euo pipefail

die() { printf 'vm %s: error: %s\n' "${line:-?}" "$*" >&2; exit 1; }
say() { printf 'vm %s: %s\n' "${line:-?}" "$*" >&2; }

line=${1:-}
# Per kernel line: the Debian suites that carry it.
case $line in
  5.10) suites="bullseye bullseye-security" ;;
  6.1) suites="bookworm bookworm-security" ;;
  6.12) suites="trixie trixie-security" ;;
  *) die "usage: $0 5.10|6.1|6.12 [CAPTURE_LOCAL [PACKETS_TEST]]" ;;
esac
shift

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${1:-$target/debug/examples/capture_local}
packets=${2:-}
out=${VM_OUT:-$target/vm/$line}
cache=${VM_CACHE:-$repo/.tools/vm-kernels}
timeout_s=${VM_TIMEOUT:-400}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Host tools (scripts/deps.sh installs them). The iproute2, nftables,
# ethtool and busybox binaries are copied into the VM with their libraries.
need=(qemu-system-x86_64 cpio apt-get apt-cache dpkg-deb objcopy ldd timeout xz)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
declare -A vm_bins=(
  [/usr/sbin/ip]=iproute2 [/usr/sbin/tc]=iproute2 [/usr/sbin/nft]=nftables
  [/usr/sbin/ethtool]=ethtool [/bin/busybox]=busybox-static
)
for b in "${!vm_bins[@]}"; do [ -x "$b" ] || missing+=("$b (${vm_bins[$b]})"); done
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]}. Run 'make deps' (or set NETSCOPE_SKIP_VM=1 to skip the VM tests)."
# ldd fails on a static binary: busybox must need no libraries in the VM.
if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is not the static build: install busybox-static"; fi
[ -x "$bin" ] || die "no capture_local binary at $bin: run 'cargo build -p netscope-examples --example capture_local' first"
[ -z "$packets" ] || [ -x "$packets" ] || die "no packet test binary at $packets"

# 1. The kernel, cached unpacked per line.
kdir=$cache/$line
fetch_kernel() {
  [ -r "$keyring" ] || die "no $keyring (package debian-archive-keyring): cannot verify Debian's archive"
  # The mirrors, from the host's apt configuration as apt itself parses it
  # (sources.list or deb822 .sources): the Debian archive and, if the host
  # has one, the Debian security archive.
  local targets main_uri sec_uri
  targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(LABEL) $(TARGET_OF)' 2>/dev/null | sort -u)
  main_uri=$(awk '$3 == "Debian" && $4 == "deb" && $2 !~ /-security$/ {print $1; exit}' <<<"$targets")
  sec_uri=$(awk '$3 == "Debian-Security" && $4 == "deb" {print $1; exit}' <<<"$targets")
  [ -n "$main_uri" ] || die "the host's apt sources name no Debian archive (apt-get indextargets); cannot fetch Debian's kernel"
  local apt_dir=$kdir/apt s list
  rm -rf "$kdir" && mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d}
  : >"$apt_dir/status"
  list=$apt_dir/etc/sources.list
  for s in $suites; do
    case $s in
      *-security)
        if [ -n "$sec_uri" ]; then echo "deb [arch=amd64 signed-by=$keyring] $sec_uri $s main" >>"$list"
        else say "the host's apt sources have no Debian security archive: using $line from ${suites%% *} only"; fi ;;
      *) echo "deb [arch=amd64 signed-by=$keyring] $main_uri $s main" >>"$list" ;;
    esac
  done
  # Everything apt reads or writes is under $apt_dir; the host's lists,
  # cache, dpkg status and sources stay untouched, and the host's update
  # hooks (which refresh the host's own caches) and extra index targets
  # (AppStream metadata) are cleared for these runs. apt's sandbox user
  # cannot write here, so it runs as root.
  cat >"$apt_dir/apt.conf" <<EOF
Dir::State "$apt_dir";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir";
Dir::Cache::archives "$apt_dir/archives";
Dir::Etc::SourceList "$list";
Dir::Etc::SourceParts "$apt_dir/etc/sources.list.d";
Dir::Etc::Preferences "$apt_dir/etc/preferences";
Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
APT::Architecture "amd64";
Acquire::Languages "none";
APT::Sandbox::User "root";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear Acquire::IndexTargets::deb::DEP-11;
#clear Acquire::IndexTargets::deb::DEP-11-icons;
#clear Acquire::IndexTargets::deb::DEP-11-icons-small;
#clear Acquire::IndexTargets::deb::DEP-11-icons-large;
#clear Acquire::IndexTargets::deb::DEP-11-icons-hidpi;
#clear Acquire::IndexTargets::deb::DEP-11-icons-large-hidpi;
EOF
  local apt_opts=(-c "$apt_dir/apt.conf" -q)
  say "fetching Debian's $line kernel ($suites) into $kdir (apt-get download; not installed)"
  apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 || { cat "$apt_dir/update.log" >&2; die "apt-get update of $suites failed"; }
  local pkg
  pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || die "no linux-image-amd64 in $suites"
  (cd "$kdir" && apt-get "${apt_opts[@]}" download "$pkg") >"$apt_dir/download.log" 2>&1 \
    || { cat "$apt_dir/download.log" >&2; die "apt-get download $pkg failed"; }
  local deb
  deb=$(ls "$kdir"/*.deb)
  dpkg-deb -f "$deb" Package Version Source >"$kdir/package"
  # Only the kernel image and the module trees the VM can need (the whole
  # package unpacks to 400 MB). Modules are under /lib/modules before
  # trixie, /usr/lib/modules from trixie on.
  local mods
  dpkg-deb -c "$deb" >"$apt_dir/contents" || die "listing $pkg failed"
  mods=$(awk '$NF ~ /^\.\/(usr\/)?lib\/modules\/[^\/]+\/kernel\/$/ {print $NF; exit}' "$apt_dir/contents")
  [ -n "$mods" ] || die "no module tree in $pkg"
  mkdir -p "$kdir/root"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir/root" --wildcards \
    './boot/vmlinuz-*' "${mods%kernel/}modules.builtin" \
    "${mods}net/*" "${mods}lib/*" "${mods}crypto/*" "${mods}drivers/net/veth.ko*" \
    || die "unpacking $pkg failed"
  rm -rf "$deb" "$apt_dir"
  touch "$kdir/.unpacked"
}
[ -f "$kdir/.unpacked" ] || fetch_kernel
vmlinuz=$(ls "$kdir"/root/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
case $kver in "$line".*) ;; *) die "expected a $line kernel in $kdir, got $kver" ;; esac
moddir=
for d in "$kdir/root/lib/modules/$kver/kernel" "$kdir/root/usr/lib/modules/$kver/kernel"; do
  [ -d "$d" ] && moddir=$d
done
[ -n "$moddir" ] || die "no modules for $kver in $kdir"
builtin=${moddir%/kernel}/modules.builtin
[ -f "$builtin" ] || die "no modules.builtin for $kver in $kdir (an old cache? delete $kdir)"

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

# The modules the VM needs, in load order with their dependencies (read
# from .modinfo; the unpacked package has no modules.dep), unless the kernel
# has them built in (its modules.builtin). The nftables reference's named
# counters need the objref and counter expressions: separate modules
# nft_objref and nft_counter on 5.10; on 6.1 nft_counter and on 6.12 both
# are linked into nf_tables.ko, so they are loaded only where they exist
# (the VM's `nft -f` fails loudly when an expression is missing). libcrc32c
# needs a crc32c implementation first (a softdep). Compressed modules
# (.ko.xz, 6.12) are decompressed here: busybox's insmod takes plain ELF
# only.
modinfo_field() { objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n "s/^$2=//p"; }
order=()
builtins=()
add_module() { # name [optional]
  local m=$1 f d
  for d in "${order[@]}" "${builtins[@]}"; do [ "$d" = "$m" ] && return 0; done
  f=$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" \) | head -n1)
  if [ -z "$f" ]; then
    if grep -q "/$m\.ko\$" "$builtin"; then builtins+=("$m"); return 0; fi
    [ "${2:-}" = optional ] && return 0
    die "module $m is neither a module nor built in in $kver"
  fi
  case $f in
    *.xz) xz -dc "$f" >"$root/modules/$m.ko" || die "decompressing $f" ;;
    *) cp "$f" "$root/modules/$m.ko" ;;
  esac
  [ "$m" = libcrc32c ] && add_module crc32c_generic
  for d in $(modinfo_field "$root/modules/$m.ko" depends | tr ',' ' '); do add_module "$d"; done
  order+=("$m")
}
for m in veth sch_ingress cls_bpf nf_tables; do add_module "$m"; done
for m in nft_objref nft_counter; do add_module "$m" optional; done
printf '%s\n' "${order[@]}" >"$root/modules/order"

(cd "$root" && find . | cpio -o -H newc --quiet) >"$out/initramfs.cpio"
rm -rf "$root"
say "kernel $kver ($(tr '\n' ' ' <"$kdir/package")); initramfs $(du -h "$out/initramfs.cpio" | cut -f1) with modules: ${order[*]}; built in: ${builtins[*]:-none}"

# 3. Boot. ttyS0: kernel console; ttyS1: the report. no_timer_check: under
# TCG on a busy host the kernel's early check that the timer interrupt
# arrives through the IO-APIC can miss its window, and 6.12 then panics
# ("IO-APIC + timer doesn't work"); the check proves nothing here.
start=$(date +%s.%N)
rc=0
timeout "$timeout_s" qemu-system-x86_64 \
  -accel tcg -cpu max -smp 2 -m 1G \
  -nodefaults -display none -no-reboot -net none \
  -kernel "$vmlinuz" -initrd "$out/initramfs.cpio" \
  -append "console=ttyS0 panic=-1 loglevel=4 no_timer_check rdinit=/init" \
  -serial "file:$out/console.log" -serial "file:$out/results.log" || rc=$?
end=$(date +%s.%N)
rm -f "$out/initramfs.cpio"
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
{
  echo "VM HOST_BOOT_SECONDS $secs"
  sed 's/^/VM HOST_PACKAGE /' "$kdir/package"
} >>"$out/results.log"
say "VM ran ${secs}s (qemu exit $rc); report: $out/results.log, console: $out/console.log"
[ "$rc" -eq 0 ] || die "qemu failed or timed out after ${timeout_s}s (exit $rc); see $out/console.log"
grep -q '^VM DONE ok' "$out/results.log" || {
  grep -E '^VM (FAIL|DONE)' "$out/results.log" >&2 || true
  tail -n 30 "$out/console.log" >&2
  die "the VM did not report success"
}
