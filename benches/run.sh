#!/usr/bin/env bash
# Runs every benches/<area>.sh side by side with its anchor and assembles
# docs/benchmarks.md from the sections they write to out/bench/<area>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/bench
failed=()
for b in benches/*.sh; do
    [ "$(basename "$b")" = run.sh ] && continue
    echo "== bench $(basename "$b" .sh)"
    bash "$b" || failed+=("$(basename "$b" .sh)")
done
{
    echo "# Benchmarks"
    echo
    echo "Written by \`make bench\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))."
    echo "Every figure is measured side by side with its anchor in the same run; ratios are ours / anchor"
    echo "unless a section says otherwise. Boot figures come from the QEMU boot suite (TCG, no KVM)."
    echo
    for f in out/bench/*.md; do
        [ -f "$f" ] || continue
        cat "$f"
        echo
    done
} > docs/benchmarks.md
echo "bench: wrote docs/benchmarks.md"
[ "${#failed[@]}" = 0 ] || { echo "bench: failed: ${failed[*]}" >&2; exit 1; }
