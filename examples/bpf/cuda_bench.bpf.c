// The probe work of the GPU benchmarks (scripts/gpu-check.sh), each program one row, attached
// to the CUDA examples' vector add with `bpftime run --program NAME`:
// empty_entry + empty_exit, thread_count, shared_count, timer_entry + timer_exit, ring_event,
// and none (a probe on a kernel that does not exist: the agent loaded, nothing spliced). The
// same work on the GEMM example's kernel (a 2-D grid, whose thread id takes both dimensions):
// gemm_empty_entry + gemm_empty_exit, gemm_thread_count, gemm_shared_count, gemm_timer_entry +
// gemm_timer_exit, gemm_ring_event.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

#define SLOTS (1 << 24)

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} per_thread SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} shared SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} events SEC(".maps");

static __always_inline __u32 thread_id(struct vector_add_ctx *ctx)
{
    return (ctx->ctaid[0] * ctx->ntid[0] + ctx->tid[0]) & (SLOTS - 1);
}

SEC("kprobe/vector_add")
int empty_entry(void *ctx) { return 0; }

SEC("kretprobe/vector_add")
int empty_exit(void *ctx) { return 0; }

SEC("kprobe/vector_add")
int thread_count(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v += 1;
    return 0;
}

SEC("kprobe/vector_add")
int shared_count(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&shared, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("kprobe/vector_add")
int timer_entry(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v = bpf_ktime_get_ns();
    return 0;
}

SEC("kretprobe/vector_add")
int timer_exit(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v = bpf_ktime_get_ns() - *v;
    return 0;
}

SEC("kretprobe/vector_add")
int ring_event(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id(ctx);
    bpf_ringbuf_output(&events, &k, sizeof(k), 0);
    return 0;
}

/// The GEMM's context: the same parameters as the vector add's.
static __always_inline __u32 thread_id_2d(struct vector_add_ctx *ctx)
{
    __u32 x = ctx->ctaid[0] * ctx->ntid[0] + ctx->tid[0];
    __u32 y = ctx->ctaid[1] * ctx->ntid[1] + ctx->tid[1];
    return (y * ctx->nctaid[0] * ctx->ntid[0] + x) & (SLOTS - 1);
}

SEC("kprobe/gemm")
int gemm_empty_entry(void *ctx) { return 0; }

SEC("kretprobe/gemm")
int gemm_empty_exit(void *ctx) { return 0; }

SEC("kprobe/gemm")
int gemm_thread_count(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id_2d(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v += 1;
    return 0;
}

SEC("kprobe/gemm")
int gemm_shared_count(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&shared, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("kprobe/gemm")
int gemm_timer_entry(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id_2d(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v = bpf_ktime_get_ns();
    return 0;
}

SEC("kretprobe/gemm")
int gemm_timer_exit(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id_2d(ctx);
    __u64 *v = bpf_map_lookup_elem(&per_thread, &k);
    if (v)
        *v = bpf_ktime_get_ns() - *v;
    return 0;
}

SEC("kretprobe/gemm")
int gemm_ring_event(struct vector_add_ctx *ctx)
{
    __u32 k = thread_id_2d(ctx);
    bpf_ringbuf_output(&events, &k, sizeof(k), 0);
    return 0;
}

SEC("kprobe/no_such_kernel")
int none(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
