#!/usr/bin/env bash
# The main demo: build bpftime, compile an eBPF C program with clang, disassemble it, and run
# it on the JIT and on the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release -q -p bpftime-cli
bin=target/release/bpftime
mkdir -p target/bpf-examples
clang-14 -target bpf -mcpu=v3 -O2 -g -c examples/bpf/vm_functions.bpf.c -o target/bpf-examples/vm_functions.bpf.o

echo "== bpftime vm disasm (first lines)"
$bin vm disasm target/bpf-examples/vm_functions.bpf.o | head -12
# struct input { u64 n = 4; u64 counter; u32 values[] = {1, 2, 3, 4} }
mem="04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00 03 00 00 00 04 00 00 00"
echo "== bpftime vm run --engine jit"
$bin vm run target/bpf-examples/vm_functions.bpf.o --mem "$mem" --engine jit
echo "== bpftime vm run --engine interp"
$bin vm run target/bpf-examples/vm_functions.bpf.o --mem "$mem" --engine interp
echo "== a bad program is rejected with the reason and instruction index"
printf '\xb7\x0a\x00\x00\x00\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00' > target/bpf-examples/bad.bin
$bin vm run target/bpf-examples/bad.bin || true
