# gwos — the front door. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := image

TARGET      := x86_64-unknown-linux-gnu
OUT         := out
GWOSD       := target/$(TARGET)/release/gwosd
GWOS        := target/release/gwos
KERNEL      := $(OUT)/bzImage
IMAGE_CONFIG ?= image.toml
# Reproducible by default: the commit time of HEAD, or a fixed epoch outside git.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
export SOURCE_DATE_EPOCH
export GWOSD_PATH := $(abspath $(GWOSD))
export GWOSD := $(abspath $(GWOSD))
export GWOS_BIN := $(abspath $(GWOS))
export GWOS_OUT := $(abspath $(OUT))

.PHONY: deps kernel gwosd gwos image run test unit-test qemu-test soak bench fuzz clean repro-check lint

deps:
	@bash .ci/deps.sh

kernel: deps
	@kernel-config/build-kernel.sh $(KERNEL)

# Debian 12 ships libnftnl.a but no libmnl.a: the static build links our
# stand-in built from services/netfilter/mnl-static/mnl.c. Its header says why
# it is not upstream libmnl built from source (the source package cannot be
# fetched here); services/netfilter/tests/mnl_equivalence.rs checks it
# against the real libmnl.so.
MNL_STATIC := $(OUT)/lib/libmnl.a
$(MNL_STATIC): services/netfilter/mnl-static/mnl.c
	mkdir -p $(OUT)/lib
	gcc -O2 -Wall -Wextra -Werror -fPIE -c $< -o $(OUT)/lib/mnl.o
	ar rcsD $@ $(OUT)/lib/mnl.o

# The one static gateway binary (PID 1 + every service).
gwosd: deps $(MNL_STATIC)
	LIBMNL_LIB_DIR=$(abspath $(OUT)/lib) RUSTFLAGS="-C target-feature=+crt-static" \
	  cargo build --release --locked -p gwos-init --target $(TARGET)

# The host tool.
gwos:
	cargo build --release --locked -p gwos-image

# The development image: no [keys] release_private, so development keys sign
# it (F15: a release-named version needs --allow-dev-keys; empty it for a
# release build with a real key).
DEV_KEYS ?= --allow-dev-keys
image: deps kernel gwosd gwos
	$(GWOS) build --config $(IMAGE_CONFIG) --kernel $(KERNEL) --gwosd $(GWOSD) --out $(OUT) $(DEV_KEYS)

# Builds the dev image and boots it in QEMU for a person (`gwos run`; RUN_ARGS adds options).
run: image
	$(GWOS) run $(OUT)/gwos.img $(RUN_ARGS)

# Format and lints ([workspace.lints] in Cargo.toml), as CI runs them.
lint: deps
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# Unit tests + host integration tests (namespaces, real clients), then the QEMU boot suite.
test: image unit-test qemu-test

unit-test: deps gwosd gwos
	cargo test --locked --workspace --exclude gwos-qemu-tests -- --test-threads=2

qemu-test: image
	cargo test --locked -p gwos-qemu-tests -- --test-threads=1

# Long soaks, not part of `make test`: power cuts at GWOS_SOAK_CUTS (default 20)
# random points of an update (GWOS_SOAK_SEED repeats a run).
soak: image
	cargo test --locked -p gwos-qemu-tests --test update_power_cuts -- --ignored --test-threads=1 --nocapture

# Side-by-side benchmarks against each service's anchor; writes docs/benchmarks.md.
bench: image
	bash benches/run.sh

# Same commit, same bytes: two cold kernel builds and two image builds from
# different checkout paths, compared (slow: not part of `make test`).
repro-check: deps
	bash image/repro-check.sh

# Every fuzz target for FUZZ_SECONDS (default 60) each.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 cargo fuzz list); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	rm -rf $(OUT) target
