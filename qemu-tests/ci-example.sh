#!/usr/bin/env bash
# The CI job of docs/ci.md, as a script (the doc shows these same steps).
# Run from the repository root on Debian 12, as root:
#   bash qemu-tests/ci-example.sh
# CI_OUT (default out/ci) is where the job's image goes, so a developer's
# out/gwos.img is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
CI_OUT=${CI_OUT:-out/ci}
work=$(mktemp -d)
gwos=target/release/gwos
cleanup() {
  [ -f "$work/state/qemu.pid" ] && "$gwos" stop "$work/state" || true
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Dependencies (Debian packages: QEMU, OVMF, fwknop, OpenSSH, jq, ...; Rust via rustup).
make deps

# 2. An image for this job: the default config plus an SPA key made for the run.
fwknop --key-gen --key-gen-file "$work/spa.keys" >/dev/null
key=$(sed -n 's/^KEY_BASE64: *//p' "$work/spa.keys")
hmac=$(sed -n 's/^HMAC_KEY_BASE64: *//p' "$work/spa.keys")
sed "s|^rootfs_dir = .*|rootfs_dir = \"$PWD/rootfs\"|" image.toml >"$work/ci-image.toml"
cat >>"$work/ci-image.toml" <<TOML

[[site.spa.users]]
user = "ci"
key_base64 = "$key"
hmac_key_base64 = "$hmac"
ports = ["tcp/443"]
timeout_secs = 30
TOML
make image IMAGE_CONFIG="$work/ci-image.toml" OUT="$CI_OUT"

# 3. Boot it in the background; wait for the ready line (free host ports, JSON on stdout).
"$gwos" run "$CI_OUT/gwos.img" --detach --wait-ready --timeout 600 --state "$work/state" \
  --forward udp:0:62201 --forward tcp:0:443 --forward tcp:0:2222 >"$work/ready.json"
jq -c . "$work/ready.json"
port() { jq -r --arg p "$1" --argjson g "$2" \
  '.forwards[] | select(.proto == $p and .guest_port == $g) | .host_port' "$work/ready.json"; }
spa=$(port udp 62201); tls=$(port tcp 443); ctl=$(port tcp 2222)

# 4. Knock with fwknop (the gateway sees the host as 10.0.2.2), then TLS 1.3 on
#    tcp/443 is open for us; call health over the control channel and check it.
HOME=$work fwknop --no-rc-file --no-save-args -A tcp/443 -a 10.0.2.2 -D 127.0.0.1 -p "$spa" \
  -U ci --key-base64-rijndael "$key" --key-base64-hmac "$hmac" --use-hmac
for i in $(seq 1 10); do
  if timeout 20 openssl s_client -connect "127.0.0.1:$tls" -tls1_3 -brief </dev/null 2>&1 \
      | grep -q 'Protocol version: TLSv1.3'; then tls_ok=1; break; fi
  sleep 1
done
[ "${tls_ok:-}" = 1 ] || { echo "ci: no TLS 1.3 after the knock" >&2; exit 1; }
ssh -i "$CI_OUT/keys/dev-control" -p "$ctl" -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
  gwctl@127.0.0.1 health </dev/null >"$work/health.json"
jq -c . "$work/health.json"
jq -e '.ok == true and .services.spa == "ok" and .services.vpn == "ok"' "$work/health.json" >/dev/null

# 5. Power it off (ACPI through the QEMU monitor; killed after 60 s).
"$gwos" stop "$work/state"
echo "ci: ok"
