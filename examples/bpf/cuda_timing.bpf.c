// Block durations of the CUDA examples' vector add: the first thread of each block takes the
// GPU clock at entry and, at exit, adds the block's duration to a log2 histogram (ns) and the
// block to a per-SM count (bpf_get_smp_processor_id is the SM on a GPU).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1 << 16);
    __type(key, __u32);
    __type(value, __u64);
} block_start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} duration_log2 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} blocks_per_sm SEC(".maps");

SEC("kprobe/vector_add")
int block_enter(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] != 0)
        return 0;
    __u32 block = ctx->ctaid[0];
    __u64 *start = bpf_map_lookup_elem(&block_start, &block);
    if (start)
        *start = bpf_ktime_get_ns();
    return 0;
}

SEC("kretprobe/vector_add")
int block_exit(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] != 0)
        return 0;
    __u32 block = ctx->ctaid[0];
    __u64 *start = bpf_map_lookup_elem(&block_start, &block);
    if (!start || !*start)
        return 0;
    __u64 d = bpf_ktime_get_ns() - *start;
    __u32 bucket = 0;
    while (d > 1 && bucket < 63) {
        d >>= 1;
        bucket++;
    }
    __u64 *n = bpf_map_lookup_elem(&duration_log2, &bucket);
    if (n)
        __sync_fetch_and_add(n, 1);
    __u32 sm = bpf_get_smp_processor_id();
    __u64 *b = bpf_map_lookup_elem(&blocks_per_sm, &sm);
    if (b)
        __sync_fetch_and_add(b, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
