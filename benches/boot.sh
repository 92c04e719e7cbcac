#!/usr/bin/env bash
# Boot time of the shipped image under QEMU (TCG, no KVM, 1 vCPU): OVMF →
# systemd-boot → UKI → stage 1 (verify, dm-verity, EROFS) → stage 2 → every
# service healthy. The kernel → PID 1 and PID 1 → ready figures are the
# guest's own clock as printed on its console; wall time includes firmware.
# No anchor: there is no other gateway image to boot here. Writes
# out/bench/boot.md. Usage: benches/boot.sh  (RUNS=3; needs `make image`)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUTDIR=${GWOS_OUT:-out}
IMG=$OUTDIR/gwos.img
[[ -f $IMG ]] || { echo "boot bench: $IMG missing; run 'make image'" >&2; exit 1; }
cargo build -q --release --locked -p gwos-qemu-tests --bin gwos-qemu
mkdir -p "$OUTDIR/bench"
LINES=$(target/release/gwos-qemu boot-times "$IMG" "$RUNS")
echo "$LINES"
med() { tr ' ' '\n' | grep "^$1=" | cut -d= -f2 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
K=$(echo "$LINES" | med kernel_to_pid1_ms)
R=$(echo "$LINES" | med pid1_to_ready_ms)
W=$(echo "$LINES" | med wall_s)
{
  echo "## Boot (issue 3)"
  echo
  echo "\`bash benches/boot.sh\` (RUNS=$RUNS), $(date -u +%Y-%m-%d), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG, 1 vCPU, 512 MiB, host $(nproc) cores."
  echo "Shipped image (\`make image\`) through OVMF + systemd-boot + UKI; services in the table: $(grep -c '^\[\[service\]\]' rootfs/etc/gwos/services.toml)."
  echo
  echo "| figure (median of $RUNS) | value |"
  echo "|---|---|"
  echo "| kernel start → PID 1 (guest clock) | ${K} ms |"
  echo "| PID 1 start → ready line (verify manifest, dm-verity, EROFS, switch root, firewall, first-boot format of /var, all services healthy) | ${R} ms |"
  echo "| power-on → ready line, wall time incl. OVMF and systemd-boot | ${W} s |"
  echo
  echo "Per boot:"
  echo
  echo '```'
  echo "$LINES"
  echo '```'
} > "$OUTDIR/bench/boot.md"
echo "boot bench: wrote $OUTDIR/bench/boot.md"
