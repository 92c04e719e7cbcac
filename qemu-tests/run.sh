#!/usr/bin/env bash
# Boots a gwos image for a person (used by `make run`): `gwos run`, i.e. OVMF +
# systemd-boot, user networking with udp/62201, tcp/443 (as 8443) and tcp/2222
# forwarded to localhost, the serial console on this terminal. Extra arguments
# go to `gwos run` (see `gwos run --help`).
set -euo pipefail
img="${1:-out/gwos.img}"
shift || true
here="$(cd "$(dirname "$0")/.." && pwd)"
gwos="${GWOS_BIN:-$here/target/release/gwos}"
[ -x "$gwos" ] || cargo build --quiet --release --locked --manifest-path "$here/Cargo.toml" -p gwos-image
exec "$gwos" run "$img" "$@"
