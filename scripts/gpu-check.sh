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
    cargo build --release -p bpftime-cli -p bpftime-agent
    # The test binaries (cargo prints their paths as JSON); examples are built by a first run.
    cargo test --release -p bpftime-tests --test gpu_device --test gpu_ptx --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do cp "$exe" "$out/bin/$name"; done
    cargo test --release -p bpftime-tests --test gpu_device >/dev/null
    cp target/release/bpftime target/release/libbpftime.so target/release/libbpftime_early.so "$out/bin/"
    strip "$out"/bin/* || true
    # Every example object (the GPU machine has no clang), built as the tests build them.
    mkdir -p target/bpf-examples/include "$out/bpf-examples"
    # vmlinux.h for the examples written against it (as tests/src/clang.rs makes it).
    [ -s target/bpf-examples/include/vmlinux.h ] ||
        bpftool btf dump file /sys/kernel/btf/vmlinux format c > target/bpf-examples/include/vmlinux.h
    for src in examples/bpf/*.bpf.c; do
        obj="target/bpf-examples/$(basename "$src" .c).o"
        [ "$obj" -nt "$src" ] || clang-14 -target bpf -mcpu=v3 -O2 -g -D__TARGET_ARCH_x86 -c -I target/bpf-examples/include \
            -I examples/bpf -I/usr/include/x86_64-linux-gnu "$src" -o "$obj"
    done
    cp target/bpf-examples/*.bpf.o "$out/bpf-examples/"
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
# GPU_CHECK_TESTS: the test binaries to run (gpu_ptx needs no GPU: CI runs it everywhere).
for t in ${GPU_CHECK_TESTS:-gpu_device gpu_ptx}; do
    echo "== $t"
    if "$out/bin/$t" --test-threads 1 --nocapture 2>&1 | tee "$out/$t.log" | grep -E "^test |device:|agree|threads in|skipping|panicked|test result"; then :; fi
    if grep -q "test result: ok" "$out/$t.log"; then summary+=("$t: passed"); else summary+=("$t: FAILED"); status=1; fi
done
echo "== CUDA probes in applications built here by nvcc, run under bpftime run"
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "skipping the CUDA applications and their benchmarks: no GPU (nvidia-smi -L fails)"
    summary+=("cuda applications: skipped, no GPU")
    echo "== summary"
    printf '%s\n' "${summary[@]}"
    exit $status
fi
cuda="$out/cuda"
rm -rf "$cuda" && mkdir -p "$cuda"
bpf=target/bpf-examples
cli="$out/bin/bpftime"
NVCC="${NVCC:-nvcc}"
for ex in vector_add gemm reduce streams graph vector_add_bench kernel_shapes; do
    "$NVCC" -O2 -o "$cuda/$ex" "examples/cuda/$ex.cu" > "$cuda/$ex.nvcc.log" 2>&1 &
done
wait
for ex in vector_add gemm reduce streams graph vector_add_bench kernel_shapes; do
    [ -x "$cuda/$ex" ] || { summary+=("nvcc $ex: FAILED"); cat "$cuda/$ex.nvcc.log"; }
done
"$NVCC" --fatbin -o "$cuda/vector_add.fatbin" examples/cuda/vector_add.cu &&
    cc -O2 -DFATBIN="\"$PWD/$cuda/vector_add.fatbin\"" examples/cuda/driver_vector_add.c -ldl -o "$cuda/driver_vector_add" ||
    summary+=("driver_vector_add build: FAILED")
for h in driver_contexts; do
    cc -O2 -DFATBIN="\"$PWD/$cuda/vector_add.fatbin\"" "examples/cuda/$h.c" -ldl -o "$cuda/$h" || summary+=("$h build: FAILED")
done
# Relocatable device code (-rdc): the runtime's own load (default target, and SASS for sm_90),
# and the driver-API harness over the units' fatbins and the device-linked one.
"$NVCC" -rdc=true -o "$cuda/linked" examples/cuda/linked_{a,b,main}.cu || summary+=("nvcc -rdc linked: FAILED")
"$NVCC" -rdc=true -arch=sm_90 -o "$cuda/linked90" examples/cuda/linked_{a,b,main}.cu || summary+=("nvcc -rdc -arch=sm_90 linked: FAILED")
for u in linked_a linked_b; do
    "$NVCC" -rdc=true --fatbin -o "$cuda/$u.fatbin" "examples/cuda/$u.cu" && "$NVCC" -rdc=true -c -o "$cuda/$u.o" "examples/cuda/$u.cu"
done
# The device runtime's unit (linked_b.cu's `parent` launches a kernel), as nvcc links it in.
devrt_a=$(ls "$(dirname "$(command -v "$NVCC")")"/../lib*/libcudadevrt.a /usr/local/cuda/lib64/libcudadevrt.a 2>/dev/null | head -1)
(cd "$cuda" && ar x "$devrt_a" cuda_device_runtime.o && objcopy -O binary --only-section=__nv_relfatbin cuda_device_runtime.o devrt.fatbin) ||
    summary+=("devrt.fatbin from '$devrt_a': FAILED")
"$NVCC" -dlink "$cuda/linked_a.o" "$cuda/linked_b.o" --fatbin -o "$cuda/linked.fatbin" &&
    cc -O2 -DLINKED="\"$PWD/$cuda/linked.fatbin\"" -DUNIT_A="\"$PWD/$cuda/linked_a.fatbin\"" -DUNIT_B="\"$PWD/$cuda/linked_b.fatbin\"" \
        -DUNIT_DEVRT="\"$PWD/$cuda/devrt.fatbin\"" examples/cuda/driver_linked.c -ldl -o "$cuda/driver_linked" ||
    summary+=("driver_linked build: FAILED")
"$NVCC" --fatbin -o "$cuda/globals.fatbin" examples/cuda/globals.cu &&
    cc -O2 -DFATBIN="\"$PWD/$cuda/globals.fatbin\"" examples/cuda/driver_globals.c -ldl -o "$cuda/driver_globals" ||
    summary+=("driver_globals build: FAILED")

# map_value FILE MAP KEY: the value bpftime run printed for KEY of MAP.
map_value() {
    awk -v m="\`$2\`" -v k="  $3 => " 'index($0, "map ") == 1 { inmap = index($0, m) > 0 } inmap && index($0, k) == 1 { print substr($0, length(k) + 1); exit }' "$1"
}
# map_sum FILE MAP: the sum of MAP's printed values.
map_sum() {
    awk -v m="\`$2\`" 'index($0, "map ") == 1 { inmap = index($0, m) > 0; next } inmap && / => [0-9]+$/ { s += $NF } END { print s + 0 }' "$1"
}
# traced NAME OBJECT "APP ARGS" [bpftime run options]: the app alone and under bpftime run;
# its output must not change. Leaves bpftime's report in $cuda/NAME.report.
traced() {
    local name=$1 obj=$2 app=$3; shift 3
    timeout -k 5 120 "$cuda"/$app > "$cuda/$name.plain" 2> "$cuda/$name.plain.err"
    BPFTIME_VERBOSE=1 timeout -k 5 180 "$cli" run --shm-size 1G "$@" "$bpf/$obj.bpf.o" -- "$cuda"/$app > "$cuda/$name.traced" 2> "$cuda/$name.report"
    if ! cmp -s "$cuda/$name.plain" "$cuda/$name.traced"; then
        echo "$name: the application's output changed under bpftime:"; diff "$cuda/$name.plain" "$cuda/$name.traced" | head -5
        return 1
    fi
    grep -E "patched in|refused|no PTX|never attached|CUDA probes are off|failed" "$cuda/$name.report" | head -5
    return 0
}
# expect NAME WHAT GOT WANT
expect() {
    if [ "$3" = "$4" ]; then summary+=("cuda $1: $2 = $3 (exact)"); else summary+=("cuda $1: $2 = '$3', expected '$4': FAILED"); status=1; fi
}
if traced vector_add cuda_probes "vector_add 1048576"; then
    expect vector_add "entries" "$(map_value "$cuda/vector_add.report" calls 0)" 1048576
    expect vector_add "exits" "$(map_value "$cuda/vector_add.report" calls 1)" 1048576
else summary+=("cuda vector_add: FAILED"); status=1; fi
if traced driver_api cuda_probes "driver_vector_add 1048576 3"; then
    expect driver_api "entries" "$(map_value "$cuda/driver_api.report" calls 0)" 3145728
else summary+=("cuda driver_api: FAILED"); status=1; fi
# Contexts released, reset and destroyed (launches unsynchronised) between rounds: each round's
# launches counted once.
if traced contexts cuda_probes "driver_contexts 1048576 3"; then
    expect contexts "entries of every round" "$(map_value "$cuda/contexts.report" calls 0)" 12582912
    expect contexts "exits of every round" "$(map_value "$cuda/contexts.report" calls 1)" 12582912
else summary+=("cuda contexts: FAILED"); status=1; fi
# Relocatable device code: the agent links the units' PTX with the probes spliced in.
# (driver_linked's `link` mode: the application links the units itself with cuLink*.)
for run in linked linked90 driver_linked driver_linked:link; do
    name="rdc-${run/:/-}" app="${run%%:*}" mode="${run#*:}"
    [ "$mode" = "$run" ] && mode=""
    if traced "$name" cuda_linked "$app 1048576 3 $mode"; then
        for kv in 0:3145728 1:3145728 2:3145728 3:9437184; do
            expect "$name" "linked_hits ${kv%%:*}" "$(map_value "$cuda/$name.report" linked_hits ${kv%%:*})" ${kv#*:}
        done
        grep -E "relocatable|spliced|link" "$cuda/$name.report" | head -4
    else summary+=("cuda $name: FAILED"); status=1; fi
done
# A driver-API application linked against libcuda itself (-lcuda; the toolkit's stub to link).
if cc -O2 -DFATBIN="\"$PWD/$cuda/vector_add.fatbin\"" examples/cuda/driver_direct.c -L/usr/local/cuda/lib64/stubs -lcuda -o "$cuda/driver_direct"; then
    if traced lcuda cuda_probes "driver_direct 1048576 3"; then
        expect lcuda "entries (-lcuda)" "$(map_value "$cuda/lcuda.report" calls 0)" 3145728
    else summary+=("cuda lcuda: FAILED"); status=1; fi
else summary+=("driver_direct build: FAILED"); status=1; fi
if traced stamp cuda_launch_stamp "driver_vector_add 1048576 3"; then
    for l in 1 2 3; do expect stamp "launch $l saw the CPU's stamp" "$(map_value "$cuda/stamp.report" seen $l)" 1; done
else summary+=("cuda stamp: FAILED"); status=1; fi
# CPU and GPU timestamps compare (bpf_ktime_get_ns on both): every launch's latency from
# launch_marker() to the kernel's first thread is under a second (log2 slot < 30), never negative.
if traced latency cuda_launch_latency "driver_vector_add 1048576 3"; then
    expect latency "launches measured" "$(map_sum "$cuda/latency.report" latency_log2)" 3
    expect latency "kernels before their launch" "$(map_sum "$cuda/latency.report" before_launch)" 0
    expect latency "latencies of a second or more" "$(awk 'index($0, "map ") == 1 { inmap = index($0, "`latency_log2`") > 0; next } inmap && $2 == "=>" && $1 >= 30 { s += $3 } END { print s + 0 }' "$cuda/latency.report")" 0
    grep -A12 'map [0-9]* `latency_log2`' "$cuda/latency.report" | grep ' => ' | sed 's/^/  latency 2^/'
else summary+=("cuda latency: FAILED"); status=1; fi
# A hash map a CPU uprobe writes between launches reaches the GPU before each launch:
# launch L watches blocks 0..=L, so block b is counted (3 - b) x 256 times.
if traced hashes cuda_watched_blocks "driver_vector_add 1048576 3"; then
    for b in 0 1 2; do expect hashes "block $b counted" "$(map_value "$cuda/hashes.report" seen $b)" $(( (3 - b) * 256 )); done
else summary+=("cuda hashes: FAILED"); status=1; fi
# bpftime's bpf_cuda_exit (507) ends the GPU thread: only blocks 0 and 1 reach the kernel's end
# (the application's output changes by design, so it is not compared).
BPFTIME_VERBOSE=1 "$cli" run --shm-size 1G "$bpf/cuda_exit_blocks.bpf.o" -- "$cuda/driver_vector_add" 1048576 3 > "$cuda/exit.out" 2> "$cuda/exit.report"
expect exit "threads entered" "$(map_value "$cuda/exit.report" threads 0)" 3145728
expect exit "threads finished (blocks 0, 1)" "$(map_value "$cuda/exit.report" threads 1)" 1536
# A CPU uprobe and a GPU probe both write an array, a per-CPU array, a hash and a ring buffer
# (64 blocks of 256 threads, 3 launches back to back: the hash the CPU changes before each
# launch is merged in stream order).
for copies in 50 1000000; do
if BPFTIME_CUDA_COPY_MS=$copies traced both cuda_shared_counts "driver_vector_add 16384 3"; then
    expect both "GPU threads counted (copies every $copies ms)" "$(map_value "$cuda/both.report" counts 0)" 49152
    expect both "CPU launches counted" "$(map_value "$cuda/both.report" counts 1)" 3
    expect both "per-CPU sum" "$(grep -A1 'map [0-9]* `per_cpu`' "$cuda/both.report" | grep -o 'sum [0-9]*')" "sum 49155"
    expect both "hash: GPU blocks counted" "$(map_sum "$cuda/both.report" seen)" $(( 64 * 768 + 3 ))
    expect both "ring: CPU records" "$(grep -c 'ringbuf `events`: 8 bytes: 01' "$cuda/both.report")" 3
    expect both "ring: GPU records" "$(grep -c 'ringbuf `events`: 8 bytes: 02' "$cuda/both.report")" 192
else summary+=("cuda both: FAILED"); status=1; fi
done
# Kernels named as users name them (a template's bare name, a namespace, an anonymous
# namespace), parameters of 1 and 2 bytes and structs by value, threads ended by `exit`.
if traced shapes cuda_kernel_shapes "kernel_shapes"; then
    for kv in 0:253 1:1 2:65236 3:673059850 4:500 5:300647710726000; do
        expect shapes "shapes parameter ${kv%%:*}" "$(map_value "$cuda/shapes.report" params ${kv%%:*})" ${kv#*:}
    done
    for k in 0 1 2 3 4; do expect shapes "threads counted by probe $k" "$(map_value "$cuda/shapes.report" entries $k)" 32; done
else summary+=("cuda shapes: FAILED"); status=1; fi
# Start times in a hash keyed by thread, inserted at entry and deleted at exit, every launch.
if traced reinsert cuda_thread_times "driver_vector_add 16384 20" --map-size start=16384; then
    expect reinsert "durations measured" "$(map_value "$cuda/reinsert.report" outcome 0)" 327680
    expect reinsert "starts not stored" "$(map_value "$cuda/reinsert.report" outcome 1)" ""
    expect reinsert "hash entries left" "$(grep -A1 'map [0-9]* `start`' "$cuda/reinsert.report" | grep -o '([0-9]* entries)')" "(0 entries)"
else summary+=("cuda reinsert: FAILED"); status=1; fi
# Maps declared in host memory (bpftime's 1512, 1513): the region's values registered with the
# device and written by the kernels' probes directly (atomics over the bus), next to an ordinary
# array copied back.
if traced hostmem cuda_host_memory "driver_vector_add 1048576 3" --program count_in_host_memory; then
    expect hostmem "maps in host memory" "$(grep -o 'CUDA maps in host memory.*' "$cuda/hostmem.report")" "CUDA maps in host memory (the region's own values): settings, live, per_thread"
    expect hostmem "threads counted in host memory" "$(map_value "$cuda/hostmem.report" live 0)" 3145728
    expect hostmem "threads counted in device memory" "$(map_value "$cuda/hostmem.report" copied 0)" 3145728
    expect hostmem "per-thread entries (first 1024 threads)" "$(grep -A1 'map [0-9]* `per_thread`' "$cuda/hostmem.report" | grep -o 'sum [0-9]*')" "sum 3072"
else summary+=("cuda hostmem: FAILED"); status=1; fi
# Probes attached to an application already running (bpftime attach PID): launch 0 runs as
# built, launches 1 and 2 the patched copy of the kernel (the app's __constant__ and __device__
# variables copied around it), and the app's output is its own.
# late NAME APP OBJECT MAP: the app alone, then attached to before launch 1; prints MAP's dump.
# wait_bounded PID SECONDS: waits for PID, killing it after SECONDS (a hang is a failure, not
# the end of the run).
wait_bounded() {
    ( sleep "$2"; kill -9 "$1" 2>/dev/null ) &
    local watchdog=$!
    wait "$1"; local rc=$?
    kill "$watchdog" 2>/dev/null
    return $rc
}
late() {
    local name=$1 app=$2 obj=$3 map=$4 w="$cuda/$1.wait" shm="bpftime-gpu-$1"
    "$cuda/$app" 1048576 3 > "$cuda/$name.plain" 2>/dev/null
    rm -rf "$w" && mkdir -p "$w"
    "$cli" --shm "$shm" shm remove >/dev/null 2>&1
    BPFTIME_VERBOSE=1 DRIVER_WAIT_DIR="$w" "$cuda/$app" 1048576 3 > "$cuda/$name.out" 2> "$cuda/$name.err" &
    local pid=$!
    for _ in $(seq 200); do grep -q "before launch 1" "$cuda/$name.err" && break; sleep 0.05; done
    "$cli" --shm "$shm" attach $pid --program "$bpf/$obj.bpf.o" 2> "$cuda/$name.attach"
    touch "$w/1" "$w/2"
    wait_bounded $pid 120 || echo "$name: the application failed or hung"
    cmp -s "$cuda/$name.plain" "$cuda/$name.out" || { echo "$name: output changed"; diff "$cuda/$name.plain" "$cuda/$name.out" | head -3; }
    grep -E "hooked|patched copy|refused|cannot|through its hook|as loaded" "$cuda/$name.err" | head -8
    "$cli" --shm "$shm" map dump "$map" > "$cuda/$name.report" 2>&1
    "$cli" --shm "$shm" shm remove >/dev/null 2>&1
}
late late driver_vector_add cuda_probes calls
expect late "output unchanged" "$(cmp -s "$cuda/late.plain" "$cuda/late.out" && echo yes)" yes
expect late "entries after the attach (launches 1, 2)" "$(map_value "$cuda/late.report" calls 0)" 2097152
# The same into an application built the default way (static cudart), launching in a loop.
"$cli" --shm bpftime-gpu-latebench shm remove >/dev/null 2>&1
BPFTIME_VERBOSE=1 "$cuda/vector_add_bench" 1048576 300000 > "$cuda/latebench.out" 2>&1 &
bench_pid=$!
sleep 1
"$cli" --shm bpftime-gpu-latebench attach $bench_pid --program "$bpf/cuda_probes.bpf.o" 2> "$cuda/latebench.attach"
wait_bounded $bench_pid 120 || echo "latebench: the application failed or hung"
entries=$("$cli" --shm bpftime-gpu-latebench map dump calls 2>&1 | awk '$1 == "0" && $2 == "=>" { print $3 }')
expect latebench "whole launches counted after attaching to a running cudart app" "$(( ${entries:-0} > 0 && ${entries:-0} % 1048576 == 0 ))" 1
"$cli" --shm bpftime-gpu-latebench shm remove >/dev/null 2>&1
late lateglobals driver_globals cuda_globals counts
expect lateglobals "output unchanged (constant and device variables)" "$(cmp -s "$cuda/lateglobals.plain" "$cuda/lateglobals.out" && echo yes)" yes
expect lateglobals "entries after the attach" "$(map_value "$cuda/lateglobals.report" counts 0)" 2097152
if traced gemm cuda_launches "gemm 512" --program gemm_launch; then
    expect gemm "launches" "$(map_value "$cuda/gemm.report" launches 1)" 1
else summary+=("cuda gemm: FAILED"); status=1; fi
if traced reduce cuda_launches "reduce 1048576" --program partial_sums_launch --program final_sum_launch; then
    expect reduce "partial_sums launches" "$(map_value "$cuda/reduce.report" launches 2)" 1
    expect reduce "final_sum launches" "$(map_value "$cuda/reduce.report" launches 3)" 1
else summary+=("cuda reduce: FAILED"); status=1; fi
if traced streams cuda_launches "streams 1048576" --program scale_launch; then
    expect streams "scale launches" "$(map_value "$cuda/streams.report" launches 4)" 2
else summary+=("cuda streams: FAILED"); status=1; fi
if traced graph cuda_launches "graph 65536 5" --program increment_launch; then
    expect graph "increment launches in graphs" "$(map_value "$cuda/graph.report" launches 5)" 15
else summary+=("cuda graph: FAILED"); status=1; fi
# 1024 blocks: their 1024 records of 32 bytes fit the example's 64 KiB ring.
if traced events cuda_events "vector_add 262144"; then
    expect events "ring records" "$(grep -c 'ringbuf `events`' "$cuda/events.report")" 1024
else summary+=("cuda events: FAILED"); status=1; fi
# bpftime's GPU ring (1527, declared with records per thread) written with perf_event_output.
if traced records cuda_ring_records "vector_add 1048576"; then
    expect records "ring records" "$(grep -c 'ringbuf `records`' "$cuda/records.report")" 4096
else summary+=("cuda records: FAILED"); status=1; fi
if traced timing cuda_timing "vector_add 1048576"; then
    expect timing "block durations" "$(map_sum "$cuda/timing.report" duration_log2)" 4096
    expect timing "blocks on SMs" "$(map_sum "$cuda/timing.report" blocks_per_sm)" 4096
else summary+=("cuda timing: FAILED"); status=1; fi

# bpftime's GPU example style: vmlinux.h, helpers 501-505 by id, bpf_printk, a per-thread array.
# 262144 threads a launch: 1024 blocks, whose 3072 trace lines fit the trace ring at once.
if BPFTIME_MAP_GPU_THREAD_COUNT=262144 traced counter cuda_counter "driver_vector_add 262144 3"; then
    expect counter "entries" "$(map_sum "$cuda/counter.report" entries)" 786432
    expect counter "exits" "$(map_sum "$cuda/counter.report" exits)" 786432
    expect counter "per-thread exits" "$(grep -A1 'map [0-9]* `thread_exits`' "$cuda/counter.report" | grep -o '3 x [0-9]*\]')" "3 x 262144]"
    expect counter "puts lines" "$(grep -c 'bpf_trace_printk: vector_add: block 0 entered' "$cuda/counter.report")" 3
    expect counter "printk lines" "$(grep -c 'bpf_trace_printk: vector_add: block [0-9]* thread 0 exits' "$cuda/counter.report")" 3072
else summary+=("cuda counter: FAILED"); status=1; fi
if traced memory cuda_memory "vector_add 1048576"; then
    expect memory "loads" "$(map_value "$cuda/memory.report" accesses 0)" 2097152
    expect memory "stores" "$(map_value "$cuda/memory.report" accesses 1)" 1048576
else summary+=("cuda memory: FAILED"); status=1; fi
# An LRU hash on the device takes every insert (1,000 keys into 64: it evicts), a plain hash
# refuses the 936 past its capacity.
expect lru "failed LRU inserts" "$("$cli" vm run --engine gpu --section gpu/lru --mem "e8 03 00 00 00 00 00 00" "$bpf/gpu_lru.bpf.o" 2>/dev/null | head -1)" "r0 = 0x0 (0)"
expect lru "failed plain hash inserts" "$("$cli" vm run --engine gpu --section gpu/lru --mem "e8 03 00 00 00 00 00 00" --dump-maps "$bpf/gpu_lru.bpf.o" 2>&1 | sed -n '/`failed`/,/entries/p' | grep -o '1 => [0-9]*')" "1 => 936"
# bpf_get_prandom_u32 on the device: draws differ, fit in 32 bits and vary, on every thread;
# the host's uid, gid and name read on the device as on the CPU.
expect identity "uid, gid, comm" "$("$cli" vm run --engine gpu --section gpu/identity "$bpf/gpu_random.bpf.o" 2>/dev/null)" "$("$cli" vm run --engine interp --section gpu/identity "$bpf/gpu_random.bpf.o" 2>/dev/null)"
expect random "threads whose draws vary" "$("$cli" vm run --engine gpu --threads 1024 --section gpu/random "$bpf/gpu_random.bpf.o" 2>&1 | grep -o '1024 x r0 = 0x1')" "1024 x r0 = 0x1"
cpu_lines=$("$cli" vm run --engine interp "$bpf/gpu_printk.bpf.o" --section printk --mem "2a 00 00 00 00 00 00 00" 2>&1 >/dev/null | sed 's/.*bpf_trace_printk: //')
gpu_lines=$("$cli" vm run --engine gpu "$bpf/gpu_printk.bpf.o" --section printk --mem "2a 00 00 00 00 00 00 00" 2>&1 >/dev/null | sed 's/.*bpf_trace_printk: //')
expect printk "GPU lines equal the CPU's" "$gpu_lines" "$cpu_lines"

# Region programs as kernels of their own (bpftime's run-on-cuda): 1-D and 2-D launches.
direct_shm="bpftime-gpu-check-direct-$$"
"$cli" --shm "$direct_shm" shm remove >/dev/null 2>&1
"$cli" --shm "$direct_shm" shm create --size 64M >/dev/null && "$cli" --shm "$direct_shm" load "$bpf/gpu_direct.bpf.o" >/dev/null
"$cli" --shm "$direct_shm" prog run fill --engine gpu --grid 16 --block 256 | tail -1
"$cli" --shm "$direct_shm" map dump out > "$cuda/direct.dump"
expect direct "out[4095] (1-D, 4096 threads: 3 i)" "$(map_value "$cuda/direct.dump" out 4095)" 12285
"$cli" --shm "$direct_shm" prog run fill_2d --engine gpu --grid 4,4 --block 16,16 | tail -1
"$cli" --shm "$direct_shm" map dump out > "$cuda/direct.dump"
expect direct "out[40 * 64 + 3] (2-D, 64 x 64 threads: 1000 y + x)" "$(map_value "$cuda/direct.dump" out 2563)" 40003
"$cli" --shm "$direct_shm" shm remove >/dev/null 2>&1

echo "== CUDA probe benchmarks: vector add, us per launch (mean of 50), ratio to no agent"
bench() { grep -o '[0-9.]* us per launch' | cut -d' ' -f1; }
for n in 262144 16777216; do
    base=$("$cuda/vector_add_bench" $n 50 | bench)
    echo "$n threads: no agent $base us"
    for row in "none" "empty_entry empty_exit" "thread_count" "shared_count" "timer_entry timer_exit" "ring_event"; do
        args=(); for p in $row; do args+=(--program "$p"); done
        # BENCH_COPY_MS: how often maps are copied back during the timed launches (the copies
        # are stream-ordered, so the launches' events time them too); by default only at the
        # app's synchronisation, after the timing: the rows are the probes' own cost.
        t=$(BPFTIME_CUDA_COPY_MS=${BENCH_COPY_MS:-100000000} "$cli" run --shm-size 1G "${args[@]}" "$bpf/cuda_bench.bpf.o" -- "$cuda/vector_add_bench" $n 50 2>/dev/null | bench)
        ratio=$(awk -v a="$t" -v b="$base" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "?" }')
        printf '  %-24s %10s us  %6sx\n' "${row// /+}" "$t" "$ratio"
        summary+=("bench $n ${row// /+}: $t us (${ratio}x)")
    done
    # The per-thread counter with the agent's default copies back (every 50 ms, while the
    # launches run): what copying a 128 MiB map back costs the timed stream.
    t=$("$cli" run --shm-size 1G --program thread_count "$bpf/cuda_bench.bpf.o" -- "$cuda/vector_add_bench" $n 50 2>/dev/null | bench)
    ratio=$(awk -v a="$t" -v b="$base" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "?" }')
    printf '  %-24s %10s us  %6sx\n' "thread_count, copies" "$t" "$ratio"
    summary+=("bench $n thread_count with copies every 50 ms: $t us (${ratio}x)")
done
# The same probe work on the GEMM (1024 x 1024: a 2-D grid of 4096 blocks, compute-bound).
base=$("$cuda/gemm" 1024 50 | bench)
echo "GEMM 1024: no agent $base us"
for row in "none" "gemm_empty_entry gemm_empty_exit" "gemm_thread_count" "gemm_shared_count" "gemm_timer_entry gemm_timer_exit" "gemm_ring_event"; do
    args=(); for p in $row; do args+=(--program "$p"); done
    t=$(BPFTIME_CUDA_COPY_MS=${BENCH_COPY_MS:-100000000} "$cli" run --shm-size 1G "${args[@]}" "$bpf/cuda_bench.bpf.o" -- "$cuda/gemm" 1024 50 2>/dev/null | bench)
    ratio=$(awk -v a="$t" -v b="$base" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "?" }')
    printf '  %-24s %10s us  %6sx\n' "${row// /+}" "$t" "$ratio"
    summary+=("bench gemm 1024 ${row// /+}: $t us (${ratio}x)")
done
grep -h "patched in" "$cuda"/vector_add.report | head -1 | sed 's/^/one-time cost: /'

# The backend's benchmark table (per-thread program work next to hand-written PTX floors), last:
# the checks above matter more if the run is cut short.
echo "== GPU benchmarks"
[ -n "${GPU_CHECK_NO_BENCH:-}" ] && echo "skipped (GPU_CHECK_NO_BENCH)" ||
BPFTIME_GPU_BENCH=1 "$out/bin/gpu_device" --exact --test-threads 1 --nocapture gpu_benchmarks 2>&1 | tee "$out/bench.log" | grep -vE "^running|^$"
[ -n "${GPU_CHECK_NO_BENCH:-}" ] || { grep -q "test result: ok" "$out/bench.log" && summary+=("benchmarks: ran") || { summary+=("benchmarks: FAILED"); status=1; }; }

if [ -n "${OUT:-}" ]; then
    # The logs and reports come back with the run (the device tool copies $OUT).
    cp "$out"/*.log "$OUT"/ 2>/dev/null
    mkdir -p "$OUT/cuda" && cp "$cuda"/*.report "$cuda"/*.err "$cuda"/*.attach "$cuda"/*.out "$OUT/cuda/" 2>/dev/null
fi
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
