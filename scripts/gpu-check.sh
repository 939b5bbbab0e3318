#!/usr/bin/env bash
# Every GPU test and benchmark, in one call on a machine with an NVIDIA GPU.
#
# The GPU machine has the CUDA driver (and toolkit) but no Rust or clang, so the binaries are
# built here first:
#   bash scripts/gpu-check.sh --build   # on a build machine: release test binaries, the CLI,
#                                       # example objects and conformance vectors -> target/gpu-check
#   bash scripts/gpu-check.sh           # on the GPU machine (target/gpu-check carried over):
#                                       # runs them all and prints a summary
# Without a GPU the device tests print why they skip; the PTX-interpreter tests run anyway.
set -uo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-check

if [ "${1:-}" = "--build" ]; then
    set -e
    source scripts/setup.sh
    rm -rf "$out" && mkdir -p "$out/bin" "$out/data"
    cargo build --release -p bpftime-cli
    # The test binaries (cargo prints their paths as JSON); examples are built by a first run.
    cargo test --release -p bpftime-tests --test gpu_device --test gpu_ptx --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do cp "$exe" "$out/bin/$name"; done
    cargo test --release -p bpftime-tests --test gpu_device >/dev/null
    cp target/release/bpftime "$out/bin/"
    strip "$out"/bin/* || true
    mkdir -p "$out/bpf-examples" && cp target/bpf-examples/*.bpf.o "$out/bpf-examples/"
    [ -f ../shared/conformance/vectors.jsonl ] && cp ../shared/conformance/vectors.jsonl "$out/data/"
    du -sh "$out"
    echo "built $out: carry it to the GPU machine and run bash scripts/gpu-check.sh there"
    exit 0
fi

[ -d "$out/bin" ] || { echo "gpu-check: $out is missing: run bash scripts/gpu-check.sh --build first (where Rust is)"; exit 2; }
# The test binaries look for the repository and the objects here.
export BPFTIME_REPO_ROOT="$PWD"
export PATH="$PATH:/usr/local/cuda/bin"
mkdir -p target/bpf-examples && cp -n "$out"/bpf-examples/*.bpf.o target/bpf-examples/ 2>/dev/null || true
touch target/bpf-examples/*.bpf.o 2>/dev/null || true
[ -f "$out/data/vectors.jsonl" ] && export BPFTIME_CONFORMANCE_DIR="$PWD/$out/data"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
summary=()
for t in gpu_device gpu_ptx; do
    echo "== $t"
    if "$out/bin/$t" --test-threads 1 --nocapture 2>&1 | tee "$out/$t.log" | grep -E "^test |device:|agree|threads in|skipping|panicked|test result"; then :; fi
    if grep -q "test result: ok" "$out/$t.log"; then summary+=("$t: passed"); else summary+=("$t: FAILED"); status=1; fi
done
echo "== GPU benchmarks"
BPFTIME_GPU_BENCH=1 "$out/bin/gpu_device" --exact --test-threads 1 --nocapture gpu_benchmarks 2>&1 | tee "$out/bench.log" | grep -vE "^running|^$"
grep -q "test result: ok" "$out/bench.log" && summary+=("benchmarks: ran") || { summary+=("benchmarks: FAILED"); status=1; }
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
