#!/usr/bin/env bash
# dm-verity hash tree build: `gwos verity-format` (our Rust code) vs
# `veritysetup format` (cryptsetup, the anchor) on the same 256 MiB file,
# same salt and UUID, RUNS runs each after one warm-up (file in page cache).
# Writes out/bench/verity.md. Usage: benches/verity.sh  (RUNS=5 SIZE_MIB=256)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-256}
GWOS=${GWOS_BIN:-target/release/gwos}
OUT=${GWOS_OUT:-out}/bench
[[ -x $GWOS ]] || { echo "verity bench: $GWOS missing; run 'make gwos' (cargo build --release -p gwos-image)" >&2; exit 1; }
command -v veritysetup >/dev/null || { echo "verity bench: veritysetup missing; apt-get install cryptsetup-bin" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
SALT=$(printf 'gwos-bench' | sha256sum | cut -c1-64)
UUID=3f1c2a55-8f0e-4b1d-9c2a-0d5e6f708192
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$TMP/data"

ours() { "$GWOS" verity-format "$TMP/data" "$TMP/hash-ours" --salt "$SALT" --uuid "$UUID"; }
theirs() { veritysetup format --salt "$SALT" --uuid "$UUID" "$TMP/data" "$TMP/hash-theirs"; }

# time_runs <fn>: prints one wall time (seconds) per run
time_runs() {
  "$1" >/dev/null
  for _ in $(seq "$RUNS"); do
    local s e
    s=$(date +%s.%N); "$1" >/dev/null; e=$(date +%s.%N)
    echo "$e - $s" | bc -l
  done
}
stats() { sort -n | awk '{a[NR]=$1; s+=$1} END {printf "%.3f %.3f %.3f\n", a[1], a[int((NR+1)/2)], s/NR}'; }

R_OURS=$(ours | awk '/Root hash/ {print $3}')
R_THEIRS=$(theirs | awk '/Root hash/ {print $3}')
[[ $R_OURS == "$R_THEIRS" ]] || { echo "root hash mismatch: ours $R_OURS, veritysetup $R_THEIRS" >&2; exit 1; }
N=$(stat -c %s "$TMP/hash-ours")
cmp -n "$N" "$TMP/hash-ours" "$TMP/hash-theirs" || { echo "hash device bytes differ" >&2; exit 1; }

# interleave so background load hits both sides alike
T_OURS=(); T_THEIRS=()
for _ in $(seq "$RUNS"); do
  T_OURS+=("$(RUNS=1 time_runs ours | tail -1)")
  T_THEIRS+=("$(RUNS=1 time_runs theirs | tail -1)")
done
read -r O_MIN O_MED O_MEAN < <(printf '%s\n' "${T_OURS[@]}" | stats)
read -r T_MIN T_MED T_MEAN < <(printf '%s\n' "${T_THEIRS[@]}" | stats)
RATIO=$(echo "$T_MED / $O_MED" | bc -l)
MBS_O=$(echo "$SIZE_MIB / $O_MED" | bc -l)
MBS_T=$(echo "$SIZE_MIB / $T_MED" | bc -l)

{
  echo "## dm-verity hash tree build (gwos verity-format vs veritysetup format)"
  echo
  echo "Same ${SIZE_MIB} MiB random file, sha256, 4096-byte blocks, same salt and UUID; $RUNS timed runs each (interleaved, after a warm-up), data in page cache."
  echo "gwos hashes level 0 on all CPUs (one range per thread, pread in 128 KiB pieces); veritysetup is single-threaded."
  echo "Both outputs checked equal first (root hash \`${R_OURS:0:16}…\`, ${N} hash-device bytes identical)."
  echo
  echo "| tool | min s | median s | mean s | MiB/s (median) |"
  echo "|---|---|---|---|---|"
  printf '| gwos verity-format | %s | %s | %s | %.0f |\n' "$O_MIN" "$O_MED" "$O_MEAN" "$MBS_O"
  printf '| veritysetup format %s | %s | %s | %s | %.0f |\n' "$(veritysetup --version | awk '{print $2}')" "$T_MIN" "$T_MED" "$T_MEAN" "$MBS_T"
  echo
  printf 'Ratio (veritysetup median / gwos median): **%.2fx** (>1 means gwos is faster).\n' "$RATIO"
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r); shared with other work, so treat small differences as noise."
  echo "Commands: \`$GWOS verity-format DATA HASH --salt S --uuid U\` vs \`veritysetup format --salt S --uuid U DATA HASH\`."
  echo
} > "$OUT/verity.md"
cat "$OUT/verity.md"
