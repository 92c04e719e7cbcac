#!/usr/bin/env bash
# Control channel round trip: `ssh ... health` against gwos control (russh,
# `gwosd run control`) vs OpenSSH sshd with ForceCommand running a bash+jq
# dispatcher that prints a health JSON. Same machine, same ssh client and key,
# loopback only, N runs each with hyperfine. Writes out/bench/control.md.
#
# Env: GWOSD (default: the static release gwosd, built if missing), RUNS (default 50).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-50}"
OUT="$ROOT/out/bench"
GWOSD="${GWOSD:-$ROOT/target/x86_64-unknown-linux-gnu/release/gwosd}"
for t in hyperfine jq ssh ssh-keygen /usr/sbin/sshd; do
  command -v "$t" >/dev/null || { echo "control bench: missing $t" >&2; exit 1; }
done
if [[ ! -x "$GWOSD" ]]; then
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p gwos-init --target x86_64-unknown-linux-gnu)
fi

W="$(mktemp -d /tmp/gwos-bench-control.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_OURS="$(free_port)"
P_SSHD="$(free_port)"
ssh-keygen -q -t ed25519 -N '' -C bench@gwos -f "$W/client"
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd_host"

# --- ours
cat > "$W/site.toml" <<TOML
[control]
listen = "127.0.0.1:$P_OURS"
backend = ["127.0.0.0/8"]
[[control.keys]]
key = "$(cat "$W/client.pub")"
scopes = ["health:read"]
TOML
mkdir -p "$W/state" "$W/run"
"$GWOSD" run control --config "$W/site.toml" --state-dir "$W/state" --run-dir "$W/run" > "$W/control.out" 2>&1 &
PIDS+=($!)

# --- anchor: OpenSSH sshd + ForceCommand dispatcher (bash + jq)
cat > "$W/dispatch.sh" <<'SH'
#!/bin/bash
set -euo pipefail
req="$(cat)"; [[ -z "$req" ]] && req='{}'
trace="$(jq -r '.trace_id // empty' <<<"$req")"; [[ -z "$trace" ]] && trace="$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
case "${SSH_ORIGINAL_COMMAND:-}" in
  health) jq -cn --arg t "$trace" --arg fp "$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null | cut -d' ' -f2)" \
            '{ok:true,trace_id:$t,service:"control",status:"ok",host_key_fingerprint:$fp}';;
  *) jq -cn --arg t "$trace" '{ok:false,trace_id:$t,error:"unknown command"}'; exit 1;;
esac
SH
chmod 755 "$W/dispatch.sh"
cp "$W/client.pub" "$W/authorized_keys"
cat > "$W/sshd_config" <<CONF
Port $P_SSHD
ListenAddress 127.0.0.1
HostKey $W/sshd_host
AuthorizedKeysFile $W/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PermitTTY no
AllowTcpForwarding no
X11Forwarding no
AllowAgentForwarding no
PermitTunnel no
Subsystem sftp /bin/false
ForceCommand $W/dispatch.sh
PidFile $W/sshd.pid
LogLevel ERROR
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" &
PIDS+=($!)

SSH="ssh -n -i $W/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR"
OURS="$SSH -p $P_OURS gwctl@127.0.0.1 health"
ANCHOR="$SSH -p $P_SSHD $(id -un)@127.0.0.1 health"
for i in $(seq 50); do
  if $OURS >/dev/null 2>&1 && $ANCHOR >/dev/null 2>&1; then break; fi
  sleep 0.1
done
echo "ours:   $($OURS)"
echo "anchor: $($ANCHOR)"
$OURS | jq -e '.ok == true' >/dev/null
$ANCHOR | jq -e '.ok == true' >/dev/null

hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$W/h.json" -n "gwos control (russh)" "$OURS" -n "OpenSSH sshd + ForceCommand (bash+jq)" "$ANCHOR"

mkdir -p "$OUT"
ms() { jq -r ".results[$1].$2 * 1000 | . * 100 | round / 100" "$W/h.json"; }
RATIO="$(jq -r '(.results[0].mean / .results[1].mean) * 100 | round / 100' "$W/h.json")"
{
  echo "## control: \`ssh ... health\` round trip"
  echo
  echo "| server | mean ms | stddev ms | median ms | min ms | max ms |"
  echo "|---|---|---|---|---|---|"
  for i in 0 1; do
    echo "| $(jq -r ".results[$i].command" "$W/h.json") | $(ms $i mean) | $(ms $i stddev) | $(ms $i median) | $(ms $i min) | $(ms $i max) |"
  done
  echo
  echo "Ratio ours/anchor (mean): **$RATIO** (lower is better; each run is a full SSH connection: kex, ed25519 auth, exec, JSON reply)."
  echo "The anchor's cost per call includes sshd's fork + re-exec, its privsep child, and the ForceCommand (bash + jq, as a real dispatcher would be); ours is one process with an async task per connection. Both run on the same loaded machine at the same time of the run; absolute figures vary with load, the ratio is the figure to compare."
  echo
  echo "Machine: $(nproc) cores (load average at the end: $(cut -d" " -f1-3 /proc/loadavg), shared with other builds), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); $(ssh -V 2>&1); runs: $RUNS each (hyperfine -N, 3 warmups), loopback."
  echo "Command: \`RUNS=$RUNS bash benches/control.sh\`; ours = \`$(basename "$GWOSD") run control\` ($GWOSD)."
} > "$OUT/control.md"
cat "$OUT/control.md"
