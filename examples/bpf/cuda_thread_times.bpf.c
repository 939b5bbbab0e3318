// Per-thread durations of the CUDA examples' vector add, written the way a CPU tool keeps
// start times: each thread's GPU clock at entry goes into a hash keyed by its global thread
// id, and at exit the entry is looked up, deleted and the duration counted. Every launch
// inserts and deletes every thread's key again. `outcome` counts: [0] durations measured,
// [1] starts that could not be stored, [2] exits that found no start.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} outcome SEC(".maps");

static __always_inline __u32 thread_id(struct vector_add_ctx *ctx)
{
    return ctx->ctaid[0] * ctx->ntid[0] + ctx->tid[0];
}

static __always_inline void count(__u32 what)
{
    __u64 *n = bpf_map_lookup_elem(&outcome, &what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("kprobe/vector_add")
int thread_enter(struct vector_add_ctx *ctx)
{
    __u32 id = thread_id(ctx);
    __u64 now = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&start, &id, &now, BPF_ANY))
        count(1);
    return 0;
}

SEC("kretprobe/vector_add")
int thread_exit(struct vector_add_ctx *ctx)
{
    __u32 id = thread_id(ctx);
    __u64 *t = bpf_map_lookup_elem(&start, &id);
    if (!t) {
        count(2);
        return 0;
    }
    bpf_map_delete_elem(&start, &id);
    count(0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
