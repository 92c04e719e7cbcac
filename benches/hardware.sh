#!/usr/bin/env bash
# Boot figures of the hardware matrix (issue 18): one direct-kernel boot of
# the shipped image per NIC model and per storage controller, each to the
# ready line and a `health` call over control (qemu-tests/tests/hardware.rs).
# The kernel → PID 1 and PID 1 → ready figures are the guest's own clock;
# wall time is from QEMU start to the ready line. No anchor: it compares the
# models with each other (a driver's probe is the only per-model cost).
# Writes out/bench/hardware.md. Usage: benches/hardware.sh (needs `make image`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${GWOS_OUT:-out}
[[ -f $OUTDIR/gwos.img ]] || { echo "hardware bench: $OUTDIR/gwos.img missing; run 'make image'" >&2; exit 1; }
mkdir -p "$OUTDIR/bench"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -q --locked -p gwos-qemu-tests --test hardware matrix_ -- --test-threads=1 --nocapture >"$log" 2>&1 ||
    { grep -E 'panicked|FAILED' "$log" | head -5 >&2; echo "hardware bench: the matrix failed" >&2; exit 1; }
lines=$(grep '^MATRIX ' "$log" | sort)
echo "$lines"
[[ $(echo "$lines" | wc -l) -ge 10 ]] || { echo "hardware bench: fewer than 10 MATRIX lines" >&2; exit 1; }
{
    echo "## Hardware matrix boots (issue 18)"
    echo
    echo "\`bash benches/hardware.sh\`, $(date -u +%Y-%m-%d), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG, direct kernel boot, 1 vCPU, host $(nproc) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "One boot per model of the shipped image to the ready line, then \`health\` over control; the other device is virtio. bzImage: $(stat -c %s "$OUTDIR/bzImage") bytes."
    echo
    echo "| NIC | disk | kernel → PID 1 (ms) | PID 1 → ready (ms) | wall to ready (s) |"
    echo "|---|---|---|---|---|"
    echo "$lines" | sed -E 's/^MATRIX nic=([^ ]+) disk=([^:]+): kernel->PID1 ([0-9]+) ms, PID1->ready ([0-9]+) ms \(guest clock\), wall ([0-9.]+) s$/| \1 | \2 | \3 | \4 | \5 |/'
    echo
    echo "Differences between models are within the host's noise (a 2-core host shared with the test itself); the drivers of absent hardware only register. Sizes per driver: docs/kernel.md."
} >"$OUTDIR/bench/hardware.md"
echo "hardware bench: wrote $OUTDIR/bench/hardware.md"
