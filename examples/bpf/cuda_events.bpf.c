// A GPU probe that reports through a ring buffer: when the first thread of each block of the
// CUDA examples' vector add returns, one record with the block, its size, the kernel's element
// count (its fourth parameter, read from the probe's context) and the GPU's clock.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/// What a probe in `vector_add(const float *a, const float *b, float *c, int n)` sees: the
/// kernel's parameters, 8 bytes each, then the thread's ids.
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

struct block_event {
    __u32 block;
    __u32 threads;
    __u32 n;
    __u32 pad;
    __u64 ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} events SEC(".maps");

SEC("kretprobe/vector_add")
int block_done(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] != 0)
        return 0;
    struct block_event e = {
        .block = ctx->ctaid[0],
        .threads = ctx->ntid[0],
        .n = (__u32)ctx->n,
        .ns = bpf_ktime_get_ns(),
    };
    bpf_ringbuf_output(&events, &e, sizeof(e), 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
