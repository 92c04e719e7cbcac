#!/usr/bin/env bash
# Builds the gwos kernel (bzImage) from Debian's linux-source-6.1 with
# tinyconfig + kernel-config/gwos.config, and caches it under
# $GWOS_CACHE/kernel/<key>/ where <key> hashes the source package version,
# the fragment and this script. A cache hit costs nothing.
#
# Reproducible: every input of the bytes is in the key. The build stamp
# (uname -v, `#1 SMP <date>`) is the date of the source package's newest
# changelog entry, a function of the kernel's own source and never of HEAD,
# SOURCE_DATE_EPOCH or the wall clock, so a warm cache holds the same bytes a
# cold build makes. User, host and build number are fixed; the build runs in
# the tree with every source path mapped to a relative one.
# Usage: build-kernel.sh <output bzImage path>
#        build-kernel.sh --print-stamp   (the KBUILD_BUILD_TIMESTAMP it uses)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
changelog=/usr/share/doc/linux-source-6.1/changelog.Debian.gz
stamp() {
    [ -f "$changelog" ] || { echo "build-kernel: $changelog missing; run 'make deps' (package linux-source-6.1)" >&2; exit 1; }
    local d
    d=$(zcat "$changelog" | sed -n 's/^ -- .*>  //p')
    d=${d%%$'\n'*}
    [ -n "$d" ] || { echo "build-kernel: no dated entry in $changelog" >&2; exit 1; }
    echo "@$(LC_ALL=C date -u -d "$d" +%s)"
}
if [ "${1:-}" = --print-stamp ]; then stamp; exit 0; fi
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
    KBUILD_BUILD_TIMESTAMP=$(stamp)
    export KBUILD_BUILD_TIMESTAMP
    export KBUILD_BUILD_USER=gwos KBUILD_BUILD_HOST=gwos KBUILD_BUILD_VERSION=1
    # no absolute build path in any string of the image (WARN/BUG file names)
    export KCFLAGS="-ffile-prefix-map=$src/="
    unset SOURCE_DATE_EPOCH
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
    # what each driver adds (text+data of its built-in objects), for docs/kernel.md
    for d in net/vmxnet3 net/hyperv hv scsi/vmw_pvscsi.o scsi/storvsc_drv.o net/ethernet/amazon net/ethernet/google \
             net/ethernet/intel/ixgbe net/ethernet/intel/i40e net/ethernet/intel/ice net/ethernet/mellanox \
             net/ethernet/broadcom/bnxt net/ethernet/broadcom/tg3.o scsi/megaraid scsi/mpt3sas usb/storage \
             usb/host net/ethernet/realtek net/ethernet/intel/e1000 net/ethernet/intel/e1000e net/ethernet/intel/igb; do
        f="$src/drivers/$d"; [ -d "$f" ] && f="$f/built-in.a"
        [ -f "$f" ] && size -t "$f" 2>/dev/null | awk -v d="$d" 'END {print d, $1 + $2}'
    done > "$dir.tmp/driver-sizes" || true
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
