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

/// A thread's slot in `per_thread`: x across the grid for the vector add (a 1-D grid)...
static __always_inline __u32 thread_id(struct vector_add_ctx *ctx)
{
    return (ctx->ctaid[0] * ctx->ntid[0] + ctx->tid[0]) & (SLOTS - 1);
}

/// ... and rows of x for the GEMM (a 2-D grid; its parameters are the vector add's).
static __always_inline __u32 thread_id_2d(struct vector_add_ctx *ctx)
{
    __u32 x = ctx->ctaid[0] * ctx->ntid[0] + ctx->tid[0];
    __u32 y = ctx->ctaid[1] * ctx->ntid[1] + ctx->tid[1];
    return (y * ctx->nctaid[0] * ctx->ntid[0] + x) & (SLOTS - 1);
}

/// The benchmark's probes on `kernel`, named `prefix` + the row's name, each thread's slot
/// given by `slot`.
#define BENCH_PROBES(kernel, prefix, slot)                                       \
    SEC("kprobe/" #kernel)                                                       \
    int prefix##empty_entry(void *ctx) { return 0; }                             \
                                                                                 \
    SEC("kretprobe/" #kernel)                                                    \
    int prefix##empty_exit(void *ctx) { return 0; }                              \
                                                                                 \
    SEC("kprobe/" #kernel)                                                       \
    int prefix##thread_count(struct vector_add_ctx *ctx)                         \
    {                                                                            \
        __u32 k = slot(ctx);                                                     \
        __u64 *v = bpf_map_lookup_elem(&per_thread, &k);                         \
        if (v)                                                                   \
            *v += 1;                                                             \
        return 0;                                                                \
    }                                                                            \
                                                                                 \
    SEC("kprobe/" #kernel)                                                       \
    int prefix##shared_count(void *ctx)                                          \
    {                                                                            \
        __u32 k = 0;                                                             \
        __u64 *v = bpf_map_lookup_elem(&shared, &k);                             \
        if (v)                                                                   \
            __sync_fetch_and_add(v, 1);                                          \
        return 0;                                                                \
    }                                                                            \
                                                                                 \
    SEC("kprobe/" #kernel)                                                       \
    int prefix##timer_entry(struct vector_add_ctx *ctx)                          \
    {                                                                            \
        __u32 k = slot(ctx);                                                     \
        __u64 *v = bpf_map_lookup_elem(&per_thread, &k);                         \
        if (v)                                                                   \
            *v = bpf_ktime_get_ns();                                             \
        return 0;                                                                \
    }                                                                            \
                                                                                 \
    SEC("kretprobe/" #kernel)                                                    \
    int prefix##timer_exit(struct vector_add_ctx *ctx)                           \
    {                                                                            \
        __u32 k = slot(ctx);                                                     \
        __u64 *v = bpf_map_lookup_elem(&per_thread, &k);                         \
        if (v)                                                                   \
            *v = bpf_ktime_get_ns() - *v;                                        \
        return 0;                                                                \
    }                                                                            \
                                                                                 \
    SEC("kretprobe/" #kernel)                                                    \
    int prefix##ring_event(struct vector_add_ctx *ctx)                           \
    {                                                                            \
        __u32 k = slot(ctx);                                                     \
        bpf_ringbuf_output(&events, &k, sizeof(k), 0);                           \
        return 0;                                                                \
    }

BENCH_PROBES(vector_add, , thread_id)
BENCH_PROBES(gemm, gemm_, thread_id_2d)

SEC("kprobe/no_such_kernel")
int none(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
