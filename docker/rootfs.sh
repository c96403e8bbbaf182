#!/bin/sh
# Lays out the root filesystem of a netscope runtime image (FROM scratch):
# the binary, exactly the shared libraries it loads (ldd) and the dynamic
# loader, and /etc/passwd and /etc/group naming root and the non-root user
# (uid/gid 65532, the chart's runAsUser). Nothing else: no shell, no package
# manager.
#
#   rootfs.sh BINARY OUTDIR
#
# Run in the image build (docker/*.Dockerfile) and by scripts/images.sh on
# the host, which stages the result for a local build without a registry.
set -eu
bin=$1 out=$2
[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
name=$(basename "$bin")
mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp"
chmod 1777 "$out/tmp"
cp "$bin" "$out/usr/local/bin/$name"
chmod 0755 "$out/usr/local/bin/$name"
# "libelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x...)" and the loader
# "/lib64/ld-linux-x86-64.so.2 (0x...)": copy each real file to its path
# (and the path ldd names, when that is a symlink).
ldd "$bin" | while read -r a b c _; do
  case $b in
    "=>") lib=$c ;;
    *) lib=$a ;;
  esac
  case $lib in /*) ;; *) continue ;; esac
  [ -e "$lib" ] || { echo "rootfs.sh: $name needs $lib, which is missing" >&2; exit 1; }
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nnetscope:x:65532:65532:netscope:/nonexistent:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnetscope:x:65532:\n' >"$out/etc/group"
echo "rootfs.sh: $name and $(find "$out" -name '*.so*' | wc -l) shared objects in $out"
