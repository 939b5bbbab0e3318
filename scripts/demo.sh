#!/usr/bin/env bash
# The main demo: a userspace uprobe and uretprobe on libc's malloc in a small C workload,
# counting calls by size and timing them, with the maps printed when the workload exits.
# Then the VM on its own: disassemble and run a program, and a bad program rejected.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release -q -p bpftime-cli -p bpftime-agent
bin=target/release/bpftime
out=target/demo
mkdir -p $out
bpf_cc() { clang-14 -target bpf -mcpu=v3 -O2 -g -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu -c "$1" -o "$2"; }
bpf_cc examples/bpf/malloc_latency.bpf.c $out/malloc_latency.bpf.o
cc -O2 examples/targets/malloc_workload.c -o $out/malloc_workload

echo "== bpftime run malloc_latency.bpf.o -- malloc_workload 200000"
$bin run $out/malloc_latency.bpf.o -- $out/malloc_workload 200000

echo
echo "== the VM on its own: bpftime vm disasm / vm run (JIT and interpreter)"
bpf_cc examples/bpf/vm_functions.bpf.c $out/vm_functions.bpf.o
$bin vm disasm $out/vm_functions.bpf.o | head -6
# struct input { u64 n = 4; u64 counter; u32 values[] = {1, 2, 3, 4} }
mem="04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00 03 00 00 00 04 00 00 00"
$bin vm run $out/vm_functions.bpf.o --mem "$mem" --engine jit
$bin vm run $out/vm_functions.bpf.o --mem "$mem" --engine interp
echo "== a bad program is rejected with the reason and the instruction index"
printf '\xb7\x0a\x00\x00\x00\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00' > $out/bad.bin
$bin vm run $out/bad.bin 2>&1 || true
