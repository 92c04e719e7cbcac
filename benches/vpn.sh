#!/usr/bin/env bash
# VPN and TLS front throughput, side by side in one run:
#  1. iperf3 through the tunnel (namespaces made here): a wireguard-go client
#     to (a) our vpn on plain UDP, (b) Debian's wireguard-go as the gateway,
#     (c) our vpn through gwos-connect → tls-front (TLS 1.3).
#  2. TLS on loopback (own namespace): handshakes/s with `openssl s_time -new`
#     and bulk MB/s with iperf3, ours (tls-front) vs stunnel4, both ECDSA P-256,
#     TLS 1.3 TLS_AES_256_GCM_SHA384.
#  3. `openssl speed -evp chacha20-poly1305` single core: the crypto ceiling.
# Writes out/bench/vpn.md. Env: GWOSD, GWOS_CONNECT (default: release builds
# in $CARGO_TARGET_DIR or target/), SECS (iperf seconds, default 5).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/out/bench"
SECS="${SECS:-5}"
TD="${CARGO_TARGET_DIR:-$ROOT/target}"
GWOSD="${GWOSD:-$TD/release/gwosd}"
GWOS_CONNECT="${GWOS_CONNECT:-$TD/release/gwos-connect}"
for t in ip nft wireguard-go wg iperf3 stunnel4 openssl jq; do
  command -v "$t" >/dev/null || { echo "vpn bench: missing $t" >&2; exit 1; }
done
if [[ ! -x "$GWOSD" || ! -x "$GWOS_CONNECT" ]]; then
  (cd "$ROOT" && cargo build --release -p gwos-init --bin gwosd -p gwos-tls-front --bin gwos-connect)
fi
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1

ID=$$
GW="gwbv$ID"; CL="gwbc$ID"; LB="gwbl$ID"
W="$(mktemp -d /tmp/gwos-bench-vpn.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in "$GW" "$CL" "$LB"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  sleep 0.3
  for n in "$GW" "$CL" "$LB"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
gx() { ip netns exec "$GW" "$@"; }
cx() { ip netns exec "$CL" "$@"; }
lx() { ip netns exec "$LB" "$@"; }

for n in "$GW" "$CL" "$LB"; do ip netns add "$n"; ip netns exec "$n" ip link set lo up; done
ip link add "bg$ID" netns "$GW" type veth peer name "bc$ID" netns "$CL"
gx ip addr add 172.31.9.1/24 dev "bg$ID"; gx ip link set "bg$ID" up
cx ip addr add 172.31.9.2/24 dev "bc$ID"; cx ip link set "bc$ID" up
gx nft add table inet gwos
gx nft add chain inet gwos vpn_forward

wait_sock() { for _ in $(seq 1 200); do [[ -S "$1" ]] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }
rpc() { python3 - "$1" "$2" "$3" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"method": sys.argv[2], "params": json.loads(sys.argv[3])}) + "\n").encode())
buf = b""
while not buf.endswith(b"\n"):
    buf += s.recv(65536)
r = json.loads(buf); assert r["ok"], r; print(json.dumps(r["result"]))
PY
}
iperf_mbps() { jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$1"; }

# --- 1. tunnel throughput
cat > "$W/site.toml" <<TOML
[vpn]
public_listen = "172.31.9.1:51820"
endpoints = ["172.31.9.1:51820"]
[tls-front]
listen = "172.31.9.1:8443"
TOML
gx "$GWOSD" run vpn --config "$W/site.toml" --state-dir "$W/vpn" --run-dir "$W/run" >"$W/vpn.log" 2>&1 & PIDS+=($!)
wait_sock "$W/run/vpn.sock"
gx "$GWOSD" run tls-front --config "$W/site.toml" --state-dir "$W/tls" --run-dir "$W/run" >"$W/tls.log" 2>&1 & PIDS+=($!)
wait_sock "$W/run/tls-front.sock"
PIN="$(rpc "$W/run/tls-front.sock" health '{}' | jq -r .spki_sha256)"
CPRIV="$(wg genkey)"; CPUB="$(echo "$CPRIV" | wg pubkey)"
rpc "$W/run/vpn.sock" vpn_user_create "{\"name\":\"bench\",\"public_key\":\"$CPUB\"}" > "$W/user.json"
GPUB="$(jq -r .gateway_public_key "$W/user.json")"
gx iperf3 -s -B 10.77.0.1 -D --logfile "$W/iperf-s1.log"; sleep 0.3

client_up() { # $1 endpoint, $2 peer public key, $3 allowed ip
  cx wireguard-go -f wgb0 >/dev/null 2>&1 & PIDS+=($!)
  for _ in $(seq 1 100); do cx ip link show wgb0 >/dev/null 2>&1 && break; sleep 0.05; done
  printf '%s' "$CPRIV" > "$W/c.key"
  cx wg set wgb0 private-key "$W/c.key" peer "$2" endpoint "$1" allowed-ips "$3" persistent-keepalive 25
  cx ip addr add 10.77.0.2/32 dev wgb0; cx ip link set wgb0 mtu 1380 up
  cx ip route add "$3" dev wgb0
}
client_down() {
  kill "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  for _ in $(seq 1 40); do cx ip link show wgb0 >/dev/null 2>&1 || return 0; sleep 0.05; done
  cx ip link del wgb0 2>/dev/null || true
}
run_iperf() { # $1 dest, $2 out
  for _ in $(seq 1 40); do cx ping -c1 -W1 "$1" >/dev/null 2>&1 && break; done
  cx iperf3 -c "$1" -t "$SECS" -J > "$2"
}

client_up 172.31.9.1:51820 "$GPUB" 10.77.0.1/32
run_iperf 10.77.0.1 "$W/ours-udp.json"; client_down
cx "$GWOS_CONNECT" --server 172.31.9.1:8443 --pin "$PIN" --listen 127.0.0.1:51821 2>"$W/connect.log" & CONN=$!; PIDS+=($CONN)
client_up 127.0.0.1:51821 "$GPUB" 10.77.0.1/32
run_iperf 10.77.0.1 "$W/ours-tls.json"; client_down

# anchor: wireguard-go as the gateway on the same veth
SPRIV="$(wg genkey)"; SPUB="$(echo "$SPRIV" | wg pubkey)"; printf '%s' "$SPRIV" > "$W/s.key"
gx wireguard-go -f wga0 >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do gx ip link show wga0 >/dev/null 2>&1 && break; sleep 0.05; done
gx wg set wga0 private-key "$W/s.key" listen-port 51830 peer "$CPUB" allowed-ips 10.78.0.2/32
gx ip addr add 10.78.0.1/24 dev wga0; gx ip link set wga0 mtu 1380 up
gx iperf3 -s -B 10.78.0.1 -D --logfile "$W/iperf-s2.log"; sleep 0.3
cx wireguard-go -f wgb0 >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do cx ip link show wgb0 >/dev/null 2>&1 && break; sleep 0.05; done
cx wg set wgb0 private-key "$W/c.key" peer "$SPUB" endpoint 172.31.9.1:51830 allowed-ips 10.78.0.1/32
cx ip addr add 10.78.0.2/32 dev wgb0; cx ip link set wgb0 mtu 1380 up; cx ip route add 10.78.0.1/32 dev wgb0
run_iperf 10.78.0.1 "$W/wggo.json"

OURS_UDP="$(iperf_mbps "$W/ours-udp.json")"; OURS_TLS="$(iperf_mbps "$W/ours-tls.json")"; WGGO="$(iperf_mbps "$W/wggo.json")"

# --- 2. TLS on loopback: tls-front vs stunnel4
cat > "$W/lb.toml" <<TOML
[tls-front]
listen = "127.0.0.1:9443"
vpn = "127.0.0.1:5201"
max_per_source = 100000
max_connections = 100000
TOML
lx "$GWOSD" run tls-front --config "$W/lb.toml" --state-dir "$W/tls-lb" --run-dir "$W/run-lb" >"$W/tls-lb.log" 2>&1 & PIDS+=($!)
wait_sock "$W/run-lb/tls-front.sock"
LPIN="$(rpc "$W/run-lb/tls-front.sock" health '{}' | jq -r .spki_sha256)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=gwos -days 2 \
  -keyout "$W/st.key" -out "$W/st.crt" 2>/dev/null
cat > "$W/stunnel.conf" <<CONF
foreground = yes
pid =
[srv]
accept = 127.0.0.1:9444
connect = 127.0.0.1:5202
cert = $W/st.crt
key = $W/st.key
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
[cli]
client = yes
accept = 127.0.0.1:9445
connect = 127.0.0.1:9444
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_256_GCM_SHA384
CONF
lx stunnel4 "$W/stunnel.conf" >"$W/stunnel.log" 2>&1 & PIDS+=($!)
sleep 0.5
hs_rate() { lx openssl s_time -connect "$1" -new -time 5 -ciphersuites TLS_AES_256_GCM_SHA384 2>/dev/null \
  | awk '/connections in [0-9.]+ real seconds/ {for (i=1;i<=NF;i++) if ($i=="connections") {n=$(i-1)}; for (i=1;i<=NF;i++) if ($i=="real") {t=$(i-1)}; printf "%.0f", n/t; exit}'; }
HS_OURS="$(hs_rate 127.0.0.1:9443)"; HS_ST="$(hs_rate 127.0.0.1:9444)"

# bulk: iperf3 -u datagrams through gwos-connect → tls-front → iperf3 server (UDP),
# vs iperf3 TCP through stunnel client → stunnel server → iperf3 server.
lx iperf3 -s -p 5201 -D --logfile "$W/iperf-lb1.log"; lx iperf3 -s -p 5202 -D --logfile "$W/iperf-lb2.log"; sleep 0.3
lx "$GWOS_CONNECT" --server 127.0.0.1:9443 --pin "$LPIN" --listen 127.0.0.1:5301 2>"$W/connect-lb.log" & PIDS+=($!)
sleep 0.3
# iperf3 sends its UDP data to the port of its control connection: socat
# steers the control TCP on 5301 to the server while UDP on 5301 is gwos-connect.
lx socat TCP-LISTEN:5301,bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:5201 & PIDS+=($!)
sleep 0.3
lx iperf3 -u -b 0 -l 1350 -c 127.0.0.1 -p 5301 -t "$SECS" -J > "$W/bulk-ours.json" || true
lx iperf3 -c 127.0.0.1 -p 9445 -t "$SECS" -J > "$W/bulk-st.json"
BULK_OURS="$(jq -r '(.end.sum_received.bits_per_second // .end.sum.bits_per_second) / 8e6 | floor' "$W/bulk-ours.json" 2>/dev/null || echo n/a)"
BULK_ST="$(jq -r '.end.sum_received.bits_per_second / 8e6 | floor' "$W/bulk-st.json")"

# --- 3. crypto ceiling
CHACHA_KBS="$(openssl speed -seconds 2 -bytes 16384 -evp chacha20-poly1305 2>/dev/null | awk '/^ChaCha20-Poly1305|^chacha20-poly1305/ {v=$NF} END {sub("k","",v); print v}')"
CHACHA_MBIT="$(awk -v k="$CHACHA_KBS" 'BEGIN {printf "%.0f", k*1000*8/1e6}')"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 > 0 && a ~ /^[0-9.]+$/) printf "%.2f", a/b; else print "n/a" }'; }
mkdir -p "$OUT"
cat > "$OUT/vpn.md" <<MD
## VPN and TLS front (benches/vpn.sh)

Machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ). Tunnel client: Debian wireguard-go
in a namespace over a veth; iperf3 TCP, $SECS s, MTU 1380. All processes share the same 2 cores,
so client, gateway and iperf3 compete for CPU.

| path | ours | anchor | ratio ours/anchor |
|---|---|---|---|
| tunnel, plain UDP (Mbit/s) | $OURS_UDP (gwosd vpn, boringtun) | $WGGO (wireguard-go gateway) | $(ratio "$OURS_UDP" "$WGGO") |
| tunnel over TLS 1.3 (Mbit/s) | $OURS_TLS (gwos-connect → tls-front → vpn) | $WGGO (wireguard-go, plain UDP) | $(ratio "$OURS_TLS" "$WGGO") |
| TLS 1.3 handshakes/s, loopback (openssl s_time -new, AES-256-GCM, P-256) | $HS_OURS (tls-front) | $HS_ST (stunnel4) | $(ratio "$HS_OURS" "$HS_ST") |
| TLS bulk MB/s, loopback | $BULK_OURS (iperf3 -u datagrams via gwos-connect → tls-front) | $BULK_ST (iperf3 TCP via stunnel4 client → server) | $(ratio "$BULK_OURS" "$BULK_ST") |
| ceiling: openssl speed -evp chacha20-poly1305, 1 core, 16 KiB (Mbit/s) | | $CHACHA_MBIT | |

Bulk is not the same workload on both sides: tls-front carries datagrams (what it
is for), stunnel a TCP stream. Command: \`sudo benches/vpn.sh\` (SECS=$SECS).
MD
cat "$OUT/vpn.md"
