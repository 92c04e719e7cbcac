#!/usr/bin/env bash
# OVMF + systemd-boot check of the A/B update path on a built image (TCG):
# v1 boots slot A; a tampered v2 bundle is refused over OpenSSH; the v2
# bundle is applied (update_apply) and update_status shows B on trial; after a
# power cycle systemd-boot boots the +3 entry: "ready slot=B version=0.2.0" and
# the boot is blessed; update_status on B shows the floor 2; the signed v1
# bundle is then refused naming the floor. Power cycle instead of `reboot`, so
# it does not depend on PID 1's init.sock. Run under the heavy lock:
#   flock /tmp/gwos-heavy.lock qemu-tests/update-ab.sh out out-v2/gwos-0.2.0.update
# (out/ from `make image`; out-v2 from gwos build --keys out/keys --version 2
#  --version-id 0.2.0 --security-floor 2 --allow-dev-keys).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-out}; B2=${2:?v2 bundle}; B1=$(ls "$OUT"/gwos-*.update | head -1)
PORT=${PORT:-24303}
tmp=$(mktemp -d); QPID=
fail() { echo "FAIL: $*"; [ -n "$QPID" ] && kill $QPID 2>/dev/null; exit 1; }
trap '[ -n "$QPID" ] && kill $QPID 2>/dev/null; rm -rf $tmp' EXIT
code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd
[ -f $code ] || { code=/usr/share/OVMF/OVMF_CODE.fd; vars=/usr/share/OVMF/OVMF_VARS.fd; }
cp --sparse=always "$OUT/gwos.img" $tmp/disk.img; cp $vars $tmp/vars.fd
SSH="ssh -i $OUT/keys/dev-control -p $PORT -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=20 gwctl@127.0.0.1"
boot() {  # boot <console log>
  LOG=$1
  qemu-system-x86_64 -machine q35 -accel tcg -m 1536 -smp 1 -nographic -serial file:$LOG \
    -monitor unix:$tmp/mon.sock,server,nowait \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=$code -drive if=pflash,format=raw,unit=1,file=$tmp/vars.fd \
    -drive file=$tmp/disk.img,format=raw,if=virtio \
    -netdev user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$PORT-:2222 -device virtio-net-pci,netdev=n0 >$tmp/qemu.out 2>&1 &
  QPID=$!
}
wait_for() {  # wait_for <pattern> <seconds>
  for ((i = 0; i < $2; i++)); do
    tr -d '\r' 2>/dev/null <"$LOG" | grep -aq -- "$1" && return 0
    kill -0 $QPID 2>/dev/null || return 1; sleep 1
  done; return 1
}
power_off() {
  printf 'system_powerdown\n' | socat - UNIX-CONNECT:$tmp/mon.sock >/dev/null 2>&1
  for _ in $(seq 60); do kill -0 $QPID 2>/dev/null || break; sleep 1; done
  kill $QPID 2>/dev/null; wait $QPID 2>/dev/null; QPID=
}
cp "$B2" $tmp/bad.update; sz=$(stat -c %s "$B2")
printf '\x5a' | dd of=$tmp/bad.update bs=1 seek=$((sz / 2)) conv=notrunc status=none

boot $tmp/console1.log
wait_for "gwos: ready slot=A" 600 || fail "v1 not ready: $(tail -c 500 $LOG)"
r=$($SSH update_apply <$tmp/bad.update 2>/dev/null); echo "tampered: $r"
echo "$r" | grep -q '"ok":false' && echo "$r" | grep -q 'sha256 mismatch' || fail "tampered bundle not refused: $r"
t0=$(date +%s); r=$($SSH update_apply <"$B2" 2>$tmp/progress); echo "v2: $r ($(( $(date +%s) - t0 )) s end to end)"
echo "$r" | grep -q '"ok":true' && echo "$r" | grep -q '"slot":"B"' || fail "v2 refused: $r $(cat $tmp/progress)"
r=$($SSH update_status </dev/null); echo "$r" | grep -q '"boot_entry":"EFI/Linux/gwos-0.2.0-b+3.efi"' || fail "status: $r"
power_off

boot $tmp/console2.log
wait_for "gwos: ready slot=B version=0.2.0" 600 || fail "no ready on B: $(tail -c 800 $LOG)"
wait_for "boot blessing: blessed" 120 || fail "B not blessed: $(grep -a blessing $LOG)"
r=$($SSH update_status </dev/null); echo "status on B: $r"
echo "$r" | grep -q '"active":"B"' && echo "$r" | grep -q '"security_floor":2' || fail "status on B: $r"
r=$($SSH update_apply <"$B1" 2>/dev/null); echo "v1 on B: $r"
echo "$r" | grep -q 'below the security floor 2' || fail "v1 not refused by the floor: $r"
power_off
echo "ok: A(0.1.0) -> B(0.2.0) through OVMF + systemd-boot; tampered and below-floor bundles refused"
