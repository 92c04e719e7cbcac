#!/usr/bin/env bash
# Runs every benches/<area>.sh side by side with its anchor and assembles
# docs/benchmarks.md from the sections they write to out/bench/<area>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/bench
failed=()
# `benches/run.sh --assemble-only` rebuilds docs/benchmarks.md from the
# sections already in out/bench/ without running anything.
assemble_only=0
[ "${1:-}" = --assemble-only ] && assemble_only=1
for b in benches/*.sh; do
    [ "$(basename "$b")" = run.sh ] || [ "$assemble_only" = 1 ] && continue
    echo "== bench $(basename "$b" .sh)"
    bash "$b" || failed+=("$(basename "$b" .sh)")
done
{
    echo "# Benchmarks"
    echo
    if [ "$assemble_only" = 1 ]; then
        echo "Assembled by \`benches/run.sh --assemble-only\` ($(date -u +%Y-%m-%d)) from sections each script wrote in its own run;"
        echo "each section names its machine, load and command. Run \`make bench\` for one fresh run of all of them."
    else
        echo "Written by \`make bench\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))."
    fi
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
