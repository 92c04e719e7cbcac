#!/usr/bin/env bash
# SPA gate vs fwknopd, side by side in one run, inside namespaces made here:
#  1. latency: real `fwknop` client sends a knock -> firewall grant present
#     (ours: element in nft set inet gwos spa_v4; fwknopd: its iptables rule in
#     FWKNOP_INPUT), median of N knocks, polled every ~2 ms the same way.
#  2. hostile throughput on one core: a flood of well-formed junk (base64,
#     204 chars, wrong HMAC) at the server pinned to CPU 0; datagrams the
#     server consumed per CPU-second (UDP InDatagrams / (utime+stime)).
# Writes out/bench/spa.md. Needs root, fwknop, fwknopd, nft, iptables, socat, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${SPA_BENCH_KNOCKS:-15}
FLOOD_SECS=${SPA_BENCH_FLOOD_SECS:-8}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${SPA_BENCH_PROFILE:-release}   # release for published figures; debug for a quick look
if [ "$PROFILE" = release ]; then cargo build -q --release -p gwos-init -p gwos-netfilter --bins
else cargo build -q -p gwos-init -p gwos-netfilter --bins; PROFILE=debug; fi
GWOSD=$CARGO_TARGET_DIR/$PROFILE/gwosd
BASE=$CARGO_TARGET_DIR/$PROFILE/gwos-nft-base
K=PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=
H='YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA=='
GW=gwspab$$g; CL=gwspab$$c
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.2
  ip netns del "$GW" 2>/dev/null || true
  ip netns del "$CL" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$GW"; ip netns add "$CL"
ip -n "$GW" link set lo up; ip -n "$CL" link set lo up
ip link add vgb$$ netns "$GW" type veth peer name vcb$$ netns "$CL"
ip -n "$GW" addr add 10.202.0.1/24 dev vgb$$; ip -n "$CL" addr add 10.202.0.2/24 dev vcb$$
ip -n "$GW" link set vgb$$ up; ip -n "$CL" link set vcb$$ up

knock() { ip netns exec "$CL" env HOME="$TMP" fwknop --no-rc-file --no-save-args -A tcp/443 -a 10.202.0.2 -D 10.202.0.1 \
  -U alice --key-base64-rijndael "$K" --key-base64-hmac "$H" --use-hmac >/dev/null 2>&1; }
# prints ms from just before the client runs until "$@" succeeds
time_grant() {
  local t0 t1; t0=$(date +%s%N); knock
  until "$@" >/dev/null 2>&1; do :; done
  t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.1f", m/1000}'; }
udp_in() { ip netns exec "$GW" awk '/^Udp:/ {n++; if (n==2) print $2}' /proc/net/snmp; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
flood() { # well-formed junk with a wrong HMAC, as fast as python can send
  ip netns exec "$CL" timeout "$FLOOD_SECS" python3 -c '
import socket, base64, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pk = [base64.b64encode(os.urandom(153)).decode().rstrip("=")[:204].encode() for _ in range(64)]
i = 0
while True:
    try: s.sendto(pk[i & 63], ("10.202.0.1", 62201))
    except OSError: pass
    i += 1' || true
}
measure_flood() { # $1 = server pid -> "pkts/cpu-s"
  local in0 c0 in1 c1 hz; hz=$(getconf CLK_TCK)
  in0=$(udp_in); c0=$(cpu_ticks "$1"); flood; sleep 0.5
  in1=$(udp_in); c1=$(cpu_ticks "$1")
  awk -v n=$((in1 - in0)) -v c=$((c1 - c0)) -v hz="$hz" -v s="$FLOOD_SECS" 'BEGIN { cs = c / hz; if (cs < 0.01) cs = 0.01; printf "%d %.2f %.0f %.0f", n, cs, n / cs, n / s }'
}

# ---------------- ours ----------------
cat > "$TMP/site.toml" <<TOML
[control]
backend = ["192.0.2.0/24"]
[spa]
[[spa.users]]
user = "alice"
key_base64 = "$K"
hmac_key_base64 = "$H"
ports = ["tcp/443"]
timeout_secs = 1
TOML
ip netns exec "$GW" "$BASE" "$TMP/site.toml" 2>/dev/null
mkdir -p "$TMP/state" "$TMP/run"
ip netns exec "$GW" taskset -c 0 "$GWOSD" run spa --config "$TMP/site.toml" --state-dir "$TMP/state" --run-dir "$TMP/run" >"$TMP/events" 2>&1 &
PIDS+=($!); sleep 0.5
OURPID=$(pgrep -f -n "gwosd run spa --config $TMP/site.toml")
ours_lat=$(for i in $(seq "$N"); do
  time_grant sh -c "ip netns exec $GW nft list set inet gwos spa_v4 | grep -q '10.202.0.2 . tcp . 443'"
  sleep 1.3   # let the 1 s element expire
done | median)
read -r ours_n ours_cpu ours_pps ours_rate <<<"$(measure_flood "$OURPID")"
kill "$OURPID" 2>/dev/null || true; sleep 0.3

# ---------------- fwknopd (iptables backend) ----------------
ip netns exec "$GW" nft flush ruleset
cat > "$TMP/fwknopd.conf" <<CONF
ENABLE_UDP_SERVER Y;
UDPSERV_PORT 62201;
PCAP_INTF lo;
FWKNOP_RUN_DIR $TMP;
ENABLE_DIGEST_PERSISTENCE N;
CONF
cat > "$TMP/access.conf" <<CONF
SOURCE ANY
KEY_BASE64 $K
HMAC_KEY_BASE64 $H
REQUIRE_USERNAME alice
REQUIRE_SOURCE_ADDRESS Y
OPEN_PORTS tcp/443
FW_ACCESS_TIMEOUT 1
CONF
chmod 600 "$TMP/fwknopd.conf" "$TMP/access.conf"
ip netns exec "$GW" taskset -c 0 fwknopd -f -i lo -c "$TMP/fwknopd.conf" -a "$TMP/access.conf" -d "$TMP/digest.cache" -p "$TMP/fwknopd.pid" >"$TMP/fwknopd.log" 2>&1 &
PIDS+=($!); sleep 1.5
FWPID=$(cat "$TMP/fwknopd.pid" 2>/dev/null || pgrep -n fwknopd)
fw_lat=$(for i in $(seq "$N"); do
  time_grant sh -c "ip netns exec $GW iptables -S FWKNOP_INPUT 2>/dev/null | grep -q 10.202.0.2"
  sleep 2.5   # fwknopd expires rules on a 1 s timer check
done | median)
read -r fw_n fw_cpu fw_pps fw_rate <<<"$(measure_flood "$FWPID")"

mkdir -p "$ROOT/out/bench"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
cat > "$ROOT/out/bench/spa.md" <<MD
## SPA gate (gwos spa) vs fwknopd 2.6.10

| measure | gwos spa | fwknopd | ratio (fwknopd/gwos) |
|---|---|---|---|
| knock → grant present, median of $N (ms, incl. fwknop client start and ~2-5 ms polling) | $ours_lat | $fw_lat | $(ratio "$fw_lat" "$ours_lat") |
| hostile datagrams consumed per CPU-second, one core (wrong-HMAC junk, one source) | $ours_pps | $fw_pps | $(ratio "$ours_pps" "$fw_pps") (gwos/fwknopd) |
| datagrams delivered during the ${FLOOD_SECS} s flood / server CPU seconds | $ours_n / $ours_cpu | $fw_n / $fw_cpu | |

- gwos: \`gwosd run spa\` ($PROFILE build), base ruleset from \`gwos-nft-base\`, element added over netlink.
- fwknopd: Debian 2.6.10, UDP server mode, iptables backend (\`iptables\` = $(iptables --version 2>/dev/null)), same keys and stanza.
- gwos spends HMAC work on at most \`burst\` + \`rate_per_sec\` (10 + 5/s) packets per source; the rest of a one-source flood is dropped after the replay lookup. That per-source budget is the designed defence, not a faster HMAC; fwknopd verifies the HMAC of every packet.
- The flood sender (python3) is the bottleneck, so the per-CPU-second figure is the comparable one.
- Both pinned to CPU 0 (\`taskset -c 0\`); flood from python3 in a second namespace over veth.
- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r). Command: \`benches/spa.sh\` ($(date -u +%Y-%m-%dT%H:%MZ)).
MD
cat "$ROOT/out/bench/spa.md"
