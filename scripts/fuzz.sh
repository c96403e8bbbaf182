#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default
# 60), one after the other, at the lowest CPU priority. New inputs that reach
# new code are added to fuzz/corpus/<target>/; a crash stops the run and
# leaves its input in fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS=600 make fuzz                    # each target for 10 minutes
#   FUZZ_TARGETS="report topology" make fuzz      # some targets only
#
# cargo-fuzz is installed into .tools/cargo-fuzz/ when missing. It runs on the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets it pass its instrumentation flags,
# and no sanitizer is used (`-s none`: AddressSanitizer needs a nightly
# standard library; the code under test is safe Rust). libFuzzer is C++ and
# needs g++ or clang++. The bpf_frame target loads the BPF program and needs
# root; it runs under the lock the kernel tests share
# (/tmp/netscope-netns.lock).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-report topology custom_endpoints bpf_frame}
CARGO_FUZZ_VERSION=0.13.2
TOOLS=$ROOT/.tools/cargo-fuzz

say() { echo "make fuzz: $*" >&2; }

if ! [ -x "$TOOLS/bin/cargo-fuzz" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo-fuzz/"
  cargo install --locked --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH=$TOOLS/bin:$PATH
export RUSTC_BOOTSTRAP=1
FLAGS=(-s none --features libfuzzer)

nice -n 19 cargo fuzz build "${FLAGS[@]}"
for t in $TARGETS; do
  lock=()
  max_len=4096
  if [ "$t" = bpf_frame ]; then
    if [ "$(id -u)" -ne 0 ]; then say "bpf_frame loads BPF programs: run as root"; exit 1; fi
    lock=(flock /tmp/netscope-netns.lock)
    max_len=3002 # flags + gso byte + the largest frame the target runs
  fi
  say "$t for ${SECONDS_EACH}s"
  "${lock[@]}" nice -n 19 cargo fuzz run "${FLAGS[@]}" "$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len="$max_len" -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1
done
say "done: ${TARGETS} ran ${SECONDS_EACH}s each without a crash"
