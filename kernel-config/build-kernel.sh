#!/usr/bin/env bash
# Builds the gwos kernel (bzImage) from Debian's linux-source-6.1 with
# tinyconfig + kernel-config/gwos.config, and caches it under
# $GWOS_CACHE/kernel/<key>/ where <key> hashes the source package version,
# the fragment and this script. A cache hit costs nothing.
# Usage: build-kernel.sh <output bzImage path>
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-kernel.sh <output-bzImage>}
cache=${GWOS_CACHE:-$here/../.cache}
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || { echo "build-kernel: $tarball missing; run 'make deps' (package linux-source-6.1)" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$srcver"; cat "$here/gwos.config" "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
dir="$cache/kernel/$key"
if [ -f "$dir/bzImage" ]; then
    echo "kernel: cache hit $dir (linux-source-6.1 $srcver)"
else
    echo "kernel: cache miss, building linux-source-6.1 $srcver into $dir (tens of minutes on 2 cores)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    start=$(date +%s)
    tar -xf "$tarball" -C "$dir.tmp"
    src=$(echo "$dir.tmp"/linux-source-6.1)
    export KBUILD_BUILD_TIMESTAMP="${SOURCE_DATE_EPOCH:+@$SOURCE_DATE_EPOCH}"
    export KBUILD_BUILD_TIMESTAMP=${KBUILD_BUILD_TIMESTAMP:-@0}
    export KBUILD_BUILD_USER=gwos KBUILD_BUILD_HOST=gwos KBUILD_BUILD_VERSION=1
    make -C "$src" -s ARCH=x86_64 tinyconfig
    "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/gwos.config" >/dev/null
    make -C "$src" -s ARCH=x86_64 olddefconfig
    # every line of the fragment must have survived olddefconfig
    missing=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qxF "$line" "$src/.config" || { echo "kernel: fragment option lost: $line" >&2; missing=1; } ;;
            "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; if grep -q "^$opt=" "$src/.config"; then echo "kernel: fragment option forced on: $opt" >&2; missing=1; fi ;;
        esac
    done < "$here/gwos.config"
    [ "$missing" = 0 ] || { echo "kernel: the fragment does not apply cleanly (see above)" >&2; exit 1; }
    nice -n 5 make -C "$src" -s ARCH=x86_64 -j"$(nproc)" bzImage
    cp "$src/arch/x86/boot/bzImage" "$dir.tmp/bzImage.out"
    cp "$src/.config" "$dir.tmp/config"
    echo "$(( $(date +%s) - start ))" > "$dir.tmp/build-seconds"
    rm -rf "$src"
    mv "$dir.tmp/bzImage.out" "$dir.tmp/bzImage"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "kernel: built in $(cat "$dir/build-seconds") s"
fi
mkdir -p "$(dirname "$out")"
cp "$dir/bzImage" "$out"
cp "$dir/config" "$out.config"
