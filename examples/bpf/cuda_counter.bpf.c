// GPU probes written the way bpftime's GPU examples are, to show they load unmodified: built
// against vmlinux.h, bpftime's GPU helpers called by id (501 puts, 502 %globaltimer, 503 block
// index, 505 thread index, each writing x, y, z as u64s through pointers), `bpf_printk`, hash
// maps keyed by the host process, `kprobe/`/`kretprobe/` sections naming the mangled kernel,
// and a plain libbpf loader (examples/loaders/attach_all.c) attaching them with
// `bpf_program__attach`. Their messages reach the trace pipe (`bpftime trace`).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

static const void (*gpu_puts)(const char *) = (void *)501;
static const u64 (*gpu_globaltimer)(void) = (void *)502;
static const u64 (*gpu_block_idx)(u64 *x, u64 *y, u64 *z) = (void *)503;
static const u64 (*gpu_thread_idx)(u64 *x, u64 *y, u64 *z) = (void *)505;

// Kernel entries per process (one per GPU thread).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, u32);
    __type(value, u64);
} entries SEC(".maps");

// Kernel exits per process.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, u32);
    __type(value, u64);
} exits SEC(".maps");

// Entries per block (x).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, u32);
    __type(value, u64);
} block_threads SEC(".maps");

// [0]: entries of thread x 0 (one per block per launch); [1]: 1 once an exit came after the
// block's first entry in %globaltimer order.
struct {
    __uint(type, 1503);
    __uint(max_entries, 2);
    __type(key, u32);
    __type(value, u64);
} firsts SEC(".maps");

// Exits per GPU thread (bpftime's per-thread array: each thread counts in its own slot).
struct {
    __uint(type, 1502);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} thread_exits SEC(".maps");

// %globaltimer at the latest entry of thread 0 of each block.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, u32);
    __type(value, u64);
} block_start SEC(".maps");

static void count(void *map, u32 key)
{
    u64 one = 1;
    u64 *n = bpf_map_lookup_elem(map, &key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else if (bpf_map_update_elem(map, &key, &one, BPF_NOEXIST))
        // Another thread made it first.
        if ((n = bpf_map_lookup_elem(map, &key)))
            __sync_fetch_and_add(n, 1);
}

SEC("kprobe/_Z10vector_addPKfS0_Pfi")
int vector_add_entry(void *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 bx, by, bz, tx, ty, tz;
    gpu_block_idx(&bx, &by, &bz);
    gpu_thread_idx(&tx, &ty, &tz);
    count(&entries, pid);
    count(&block_threads, (u32)bx);
    if (tx == 0) {
        u32 k = 0;
        u64 *first = bpf_map_lookup_elem(&firsts, &k);
        if (first)
            __sync_fetch_and_add(first, 1);
        u64 now = gpu_globaltimer();
        u32 block = bx;
        bpf_map_update_elem(&block_start, &block, &now, BPF_ANY);
        if (bx == 0)
            gpu_puts("vector_add: block 0 entered");
    }
    return 0;
}

SEC("kretprobe/_Z10vector_addPKfS0_Pfi")
int vector_add_exit(void *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    count(&exits, pid);
    u32 zero = 0;
    u64 *mine = bpf_map_lookup_elem(&thread_exits, &zero);
    if (mine)
        *mine += 1;
    u64 bx, by, bz, tx, ty, tz;
    gpu_block_idx(&bx, &by, &bz);
    gpu_thread_idx(&tx, &ty, &tz);
    if (tx == 0)
        bpf_printk("vector_add: block %lu thread %lu exits", bx, tx);
    u32 block = bx;
    u64 *start = bpf_map_lookup_elem(&block_start, &block);
    if (start && gpu_globaltimer() >= *start) {
        u32 k = 1;
        u64 *seen = bpf_map_lookup_elem(&firsts, &k);
        if (seen)
            *seen = 1;
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
