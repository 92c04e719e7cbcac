#!/usr/bin/env bash
# Installs everything the build, tests and benchmarks need on Debian 12.
# Idempotent: packages already present are not touched; a second run is fast.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "deps: run as root (apt-get)" >&2; exit 1; }
mapfile -t pkgs < <(grep -v '^\s*#' "$here/debian-packages.txt" | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Some Debian 12 machines carry qemu-utils from bookworm-backports; then
    # qemu-system-x86 must come from backports too, or apt refuses the mix.
    if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
        if [ ! -f /etc/apt/sources.list.d/gwos-backports.sources ]; then
            cat > /etc/apt/sources.list.d/gwos-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            apt-get update -qq
        fi
        if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
            apt-get install -y -q --no-install-recommends -t bookworm-backports \
                qemu-system-x86 qemu-system-common qemu-system-data seabios
        fi
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "deps: all ${#pkgs[@]} Debian packages present"
fi
# fwknopd and rsyslog must not run as system services on a build machine.
for svc in fwknop-server rsyslog stunnel4 ssh; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu || rustup target add x86_64-unknown-linux-gnu
