#!/usr/bin/env bash
# Boots a gwos image for a person (used by `make run`): OVMF + systemd-boot,
# user networking with udp/62201, tcp/443 (as 8443) and tcp/2222 forwarded to localhost.
set -euo pipefail
img="${1:-out/gwos.img}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --quiet --manifest-path "$here/Cargo.toml" -p gwos-qemu-tests --bin gwos-qemu
exec "${CARGO_TARGET_DIR:-$here/target}/debug/gwos-qemu" run "$img"
