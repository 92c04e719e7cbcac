#!/usr/bin/env bash
# logship vs rsyslog omfwd: events/s shipped over TLS to the same rsyslogd
# receiver (imtcp + gtls) in the same run, both with a durable queue:
# logship's spool (fdatasync group commit) and rsyslog's disk-assisted
# LinkedList queue (queue.filename, saveOnShutdown). Events are fed as fast
# as the input takes them; the figure is N / (first fed → last received).
# Also logship's peak RSS. Loopback only, random ports. Writes
# out/bench/logship.md. Usage: benches/logship.sh  (N=50000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50000}
OUTDIR=${GWOS_OUT:-out}
PROFILE=${PROFILE:-release}  # PROFILE=debug: the debug build (quick, slower)
# release: the gateway's own static binary from `make gwosd` when it is there.
STATIC=target/x86_64-unknown-linux-gnu/release/gwosd
if [ "$PROFILE" = release ] && [ -x "$STATIC" ]; then GWOSD=$PWD/$STATIC
elif [ "$PROFILE" = release ]; then cargo build -q --release -p gwos-init --bin gwosd; GWOSD=$PWD/target/release/gwosd
else cargo build -q -p gwos-init --bin gwosd; GWOSD=$PWD/target/debug/gwosd; fi
T=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $T' EXIT
cd $T
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=siem.test 2>/dev/null
printf 'subjectAltName=DNS:siem.test\n' >ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(port); IP=$(port)
mkdir -p rwork swork
cat >recv.conf <<C
global(workDirectory="$T/rwork" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="$T/ca.pem"
       DefaultNetstreamDriverCertFile="$T/srv.pem" DefaultNetstreamDriverKeyFile="$T/srv.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="$RP" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="$T/recv.log" template="raw")
C
cat >send.conf <<C
global(workDirectory="$T/swork" DefaultNetstreamDriverCAFile="$T/ca.pem")
module(load="imtcp")
input(type="imtcp" port="$IP" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="$RP" protocol="tcp" TCP_Framing="octet-counted"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="siem.test"
       queue.type="LinkedList" queue.filename="fwdq" queue.saveOnShutdown="on" queue.maxDiskSpace="512m"
       action.resumeRetryCount="-1")
C
rsyslogd -n -f recv.conf -i recv.pid >recv.out 2>&1 & PIDS+=($!)
rsyslogd -n -f send.conf -i send.pid >send.out 2>&1 & PIDS+=($!)
cat >site.toml <<C
[logship]
siem_endpoint = "127.0.0.1:$RP"
siem_server_name = "siem.test"
siem_ca_pem = '''
$(cat ca.pem)
'''
C
$GWOSD run logship --config site.toml --state-dir ls-state --run-dir ls-run >ls.out 2>ls.err & LS=$!; PIDS+=($LS)
sleep 2
count() { grep -c "$1" recv.log 2>/dev/null || true; }
feed() { # $1 = marker, $2 = logship|rsyslog
python3 - "$1" "$2" "$N" "$T" "$IP" <<'P'
import socket, sys, json
marker, kind, n, t, ip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if kind == "logship":
    s = socket.socket(socket.AF_UNIX); s.connect(t + "/ls-run/logship-ingest.sock")
    line = lambda i: "control " + json.dumps({"time": "2026-01-01T00:00:00Z", "service": "control", "kind": "control.call", "trace_id": marker, "n": i}) + "\n"
else:
    s = socket.create_connection(("127.0.0.1", ip))
    line = lambda i: "<109>1 2026-01-01T00:00:00Z gw control - control.call - " + json.dumps({"kind": "control.call", "trace_id": marker, "n": i}) + "\n"
buf = []
for i in range(n):
    buf.append(line(i))
    if len(buf) == 500:
        s.sendall("".join(buf).encode()); buf = []
s.sendall("".join(buf).encode()); s.close()
P
}
measure() { # $1 marker $2 kind → events/s
  local t0 t1; t0=$(date +%s.%N); feed "$1" "$2"
  local peak=0
  while [ "$(count "$1")" -lt "$N" ]; do
    r=$(awk '/VmRSS/{print $2}' /proc/$LS/status); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.05
    if [ "$(echo "$(date +%s.%N) - $t0 > 600" | bc)" = 1 ]; then echo "timeout after $(count "$1") of $N" >&2; break; fi
  done
  t1=$(date +%s.%N)
  echo "$(echo "$N / ($t1 - $t0)" | bc) $peak $(count "$1")"
}
read LS_RATE LS_RSS LS_GOT < <(measure bench-logship logship)
read RS_RATE _ RS_GOT < <(measure bench-rsyslog rsyslog)
cd - >/dev/null
mkdir -p "$OUTDIR/bench"
{
  echo "## logship: events/s to a TLS SIEM (issue 13)"
  echo
  echo "\`bash benches/logship.sh\` (N=$N, PROFILE=$PROFILE), $(date -u +%Y-%m-%d), $PROFILE build of gwosd, host $(nproc) cores (shared), rsyslog $(rsyslogd -v | head -1 | awk '{print $2}' | tr -d ,), same rsyslogd receiver (imtcp + gtls) on loopback, same run."
  echo
  echo "| sender | durable queue | events/s | received of $N | sender RSS |"
  echo "|---|---|---|---|---|"
  echo "| logship (\`gwosd run logship\`) | spool, fdatasync group commit (≤100 ms / 256) | $LS_RATE | $LS_GOT | peak $((LS_RSS / 1024)) MiB |"
  echo "| rsyslog omfwd | disk-assisted LinkedList queue (queue.filename, saveOnShutdown) | $RS_RATE | $RS_GOT | — |"
  echo
  echo "Received = lines the receiver wrote to its file. logship ships a record only after it is fdatasync'd; rsyslog's disk-assisted queue writes to disk only when its memory part overflows or at shutdown, so the two durability levels differ."
} | tee "$OUTDIR/bench/logship.md"
