# netscope: two commands on a fresh Debian/Ubuntu machine, as root:
#   make demo   - run the simulated multi-zone cluster and print what it cost
#   make test   - run the whole test suite
# Both install missing system packages first (make deps).

CARGO ?= cargo
DURATION ?= 60s
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build test test-unit test-kernel bench demo lint fmt clean

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
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) test -p netscope --no-default-features

# Library tests only: no root, no clang needed.
test-unit:
	$(CARGO) test -p netscope

bench: deps
	$(CARGO) bench -p netscope-benches

demo: deps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo: the demo creates network namespaces and loads BPF programs: run it as root (sudo make demo)" >&2; exit 1; fi
	$(CARGO) build --release -p netscope-examples --example demo -p netscope-agent -p netscope-aggregator
	./target/release/examples/demo --duration $(DURATION)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
