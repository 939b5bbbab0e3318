// Probes on examples/cuda/kernel_shapes.cu's kernels, named as a user would name them: the
// bare name of a template (`scaled` for scaled<5>), a namespace-qualified name, the bare name
// of a kernel in an anonymous namespace, and a kernel whose odd threads end with inline
// assembly's `exit`. `params` keeps what `shapes` was given (parameters narrower than 8
// bytes zero-extended, a struct by value as its first 8 bytes); `entries` counts threads:
// [0] scaled, [1] shapes_ns::named, [2] hidden, [3] odd_threads_exit, [4] its returns and exits.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 7);
    __type(key, __u32);
    __type(value, __u64);
} params SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 5);
    __type(key, __u32);
    __type(value, __u64);
} entries SEC(".maps");

/// shapes(char, bool, short, uchar4, Tag, int2, long long *): 7 parameters, then the ids.
struct shapes_ctx {
    __u64 param[7];
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

static __always_inline void count(__u32 what)
{
    __u64 *n = bpf_map_lookup_elem(&entries, &what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("kprobe/shapes")
int shapes_entry(struct shapes_ctx *ctx)
{
    if (ctx->tid[0] != 0)
        return 0;
    for (__u32 i = 0; i < 7; i++) {
        __u64 *v = bpf_map_lookup_elem(&params, &i);
        if (v)
            *v = ctx->param[i];
    }
    return 0;
}

SEC("kprobe/scaled")
int scaled_entry(void *ctx)
{
    count(0);
    return 0;
}

SEC("kprobe/shapes_ns::named")
int named_entry(void *ctx)
{
    count(1);
    return 0;
}

SEC("kprobe/hidden")
int hidden_entry(void *ctx)
{
    count(2);
    return 0;
}

SEC("kprobe/odd_threads_exit")
int odd_entry(void *ctx)
{
    count(3);
    return 0;
}

SEC("kretprobe/odd_threads_exit")
int odd_exit(void *ctx)
{
    count(4);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
