#!/usr/bin/env bash
# Applying an update bundle vs the physical limit: the update writer
# (services/update, through its apply_image example: the same code the
# gateway runs, on a disk image file instead of /dev/vda) against a raw `dd`
# of the same bytes (root, verity, one UKI) into the same disk image, in the
# same run, both fsynced. Also the writer's peak RSS (goal <= 64 MiB).
# Writes out/bench/update.md and appends it to docs/benchmarks.md.
# Usage: benches/update.sh [bundle] [image]   (RUNS=3; defaults: out/gwos-*.update, out/gwos.img)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BUNDLE=${1:-$(ls out/gwos-*.update 2>/dev/null | head -1)}
IMG=${2:-out/gwos.img}
KEY=${KEY:-out/keys/dev-release.pub}
TARGET=${CARGO_TARGET_DIR:-target}
GWOS=${GWOS_BIN:-$TARGET/release/gwos}
APPLY=${APPLY_BIN:-$TARGET/release/examples/apply_image}
OUT=${GWOS_OUT:-out}/bench
for f in "$BUNDLE" "$IMG" "$KEY"; do
  [[ -f $f ]] || { echo "update bench: $f missing; run 'make image' first" >&2; exit 1; }
done
[[ -x $APPLY ]] || cargo build --release --locked -p gwos-update --example apply_image
[[ -x $GWOS ]] || cargo build --release --locked -p gwos-image
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/keys"
cp "$KEY" "$TMP/keys/release.pub"

INFO=$("$GWOS" inspect "$BUNDLE" --key "$KEY")
part() { awk -v p="$1" '$1 == "part" && $2 == p {print $3}' <<<"$INFO"; }
ROOT=$(part root); VER=$(part verity); UKI=$(part uki-b)
BUNDLE_SIZE=$(stat -c %s "$BUNDLE")
HDR=$((BUNDLE_SIZE - ROOT - VER - $(part uki-a) - UKI))
IMGINFO=$("$GWOS" inspect "$IMG" --key "$KEY")
poff() { awk -v p="$1" '$1 == p {print $3}' <<<"$IMGINFO"; }
RB=$(poff root-b); VB=$(poff verity-b); ESP=$(poff esp)
ESP_SIZE=$(awk '$1 == "esp" {print $5}' <<<"$IMGINFO")

fresh() { rm -f "$TMP/disk.img"; cp --sparse=always "$IMG" "$TMP/disk.img"; sync; }

ours() {
  rm -rf "$TMP/state"; mkdir -p "$TMP/state"
  /usr/bin/time -f '%e %M' -o "$TMP/time" "$APPLY" "$TMP/disk.img" "$BUNDLE" "$TMP/keys" "$TMP/state" A 0 >"$TMP/apply.json" 2>"$TMP/apply.log" \
    || { cat "$TMP/apply.log" >&2; exit 1; }
  cat "$TMP/time"
}
# The same bytes to the same places: root -> root-b, verity -> verity-b, uki-b -> (raw) end of the ESP.
raw() {
  local s e
  s=$(date +%s.%N)
  dd if="$BUNDLE" of="$TMP/disk.img" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc,fsync status=none \
    skip=$HDR count=$ROOT seek=$RB
  dd if="$BUNDLE" of="$TMP/disk.img" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc,fsync status=none \
    skip=$((HDR + ROOT)) count=$VER seek=$VB
  dd if="$BUNDLE" of="$TMP/disk.img" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc,fsync status=none \
    skip=$((BUNDLE_SIZE - UKI)) count=$UKI seek=$((ESP + ESP_SIZE - UKI))
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}

T_OURS=(); RSS=(); T_DD=()
for _ in $(seq "$RUNS"); do
  fresh; read -r t m < <(ours); T_OURS+=("$t"); RSS+=("$m")
  fresh; T_DD+=("$(raw)")
done
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
O=$(printf '%s\n' "${T_OURS[@]}" | med)
D=$(printf '%s\n' "${T_DD[@]}" | med)
R=$(printf '%s\n' "${RSS[@]}" | sort -n | tail -1)
BYTES=$((ROOT + VER + UKI))
SLOT=$(sed -n 's/.*"slot":"\([AB]\)".*/\1/p' "$TMP/apply.json")

{
  echo "## Update apply (benches/update.sh)"
  echo
  echo "Bundle \`$(basename "$BUNDLE")\` ($BUNDLE_SIZE bytes; written to the slot: root $ROOT + verity $VER + UKI $UKI = $BYTES bytes) into slot $SLOT of a copy of \`$IMG\` (a disk image file on the host disk; the bundle file is in the page cache for both). Median of $RUNS runs each, interleaved."
  echo "The writer verifies the header, spools and hashes every part on the state directory, writes the slot, drops the cache and reads it all back (dm-verity tree over the root partition, manifest), and writes the UKI through FAT with a read-back; dd only copies the same bytes with fsync."
  echo
  echo "| what | seconds (median) | MiB/s of slot bytes | peak RSS |"
  echo "|---|---|---|---|"
  printf '| update writer (apply_image, release build) | %.3f | %.0f | %.1f MiB |\n' "$O" "$(echo "$BYTES / 1048576 / $O" | bc -l)" "$(echo "$R / 1024" | bc -l)"
  printf '| raw dd of the same bytes, conv=fsync (the physical limit) | %.3f | %.0f | |\n' "$D" "$(echo "$BYTES / 1048576 / $D" | bc -l)"
  echo
  printf 'Ratio writer / dd: **%.2fx** the time of the raw copy. Peak RSS goal: <= 64 MiB (Flatcar update_engine: 1.3-1.9 GB).\n' "$(echo "$O / $D" | bc -l)"
  echo
  echo "Where the time goes: the writer moves every slot byte three times (spool, partition, read-back) and writes the UKI through FAT (fatfs over an 8 MiB write-back block cache, which is most of the RSS), then reads it back; dd writes each byte once."
  echo "Machine: $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); shared with other work (load $(cut -d' ' -f1 /proc/loadavg)). Not inside QEMU: same code, host file instead of a virtio disk."
  echo "Command: \`benches/update.sh $BUNDLE $IMG\`."
  echo
} > "$OUT/update.md"
cat "$OUT/update.md"
cat "$OUT/update.md" >> docs/benchmarks.md
