#!/usr/bin/env bash
# Instructions per probe hit under the agent, counted by callgrind (deterministic, unlike times
# on a shared VM): `examples/targets/calls.c` calls add() N times with the benchmark's programs
# (benches/bpf/uprobe_bench.bpf.c) attached by `bpftime run`; the count per call is the slope
# between two N, less the same target's count without probes. Needs valgrind and a release
# build (`cargo build --release -p bpftime-cli -p bpftime-agent -p bpftime-benches`).
# Usage: scripts/hit-cost.sh [AGENT.so]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
agent=$(realpath "${1:-target/release/libbpftime.so}")
cli=target/release/bpftime
obj=$(ls -t $(find target/release -name uprobe_bench.bpf.o) | head -1)
target=$(realpath target/c-targets/calls)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
refs() { grep "I   refs" "$1" | tr -d , | awk '{print $NF}'; }
count() { # N, then `bpftime run` arguments (none: no probes)
    local n=$1; shift
    if [ $# -eq 0 ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$target" "$n" 1 >/dev/null 2>"$out/log"
    else
        BPFTIME_AGENT=$agent "$cli" run "$@" -- valgrind --tool=callgrind --smc-check=all --callgrind-out-file="$out/cg" "$target" "$n" 1 >/dev/null 2>"$out/log"
    fi
    refs "$out/log"
}
per_call() { local a b; a=$(count 100000 "$@"); b=$(count 300000 "$@"); echo "($b - $a) / 200000" | bc -l; }
base=$(per_call)
row() {
    local name=$1; shift
    printf "%-28s %6.1f instructions per call of add()\n" "$name" "$(echo "$(per_call "$@") - $base" | bc -l)"
}
printf "%-28s %6.1f instructions per call of add()\n" "no probe (the call itself)" "$base"
row "uprobe, empty program" --program empty --attach "empty=$target:add" "$obj"
row "uretprobe, empty program" --program empty_ret --attach "empty_ret=$target:add" "$obj"
row "uprobe + uretprobe, 3 adds each" --program pair_entry --program pair_return --attach "pair_entry=$target:add" --attach "pair_return=$target:add" "$obj"
row "uprobe, bpftrace's count()" --program percpu_count --attach "percpu_count=$target:add" "$obj"
