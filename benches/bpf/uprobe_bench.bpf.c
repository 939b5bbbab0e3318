// Programs for the uprobe benchmark: the same object is attached by bpftime and by the kernel.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

SEC("uprobe/empty")
int empty(void *ctx)
{
    return 0;
}

SEC("uprobe/array_update")
int array_update(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&hits, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("uretprobe/empty_ret")
int empty_ret(void *ctx)
{
    return 0;
}

/* A uprobe + uretprobe pair, each doing three array lookups with atomic adds. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static __always_inline void add_three(void)
{
    for (__u32 i = 0; i < 3; i++) {
        __u32 k = i;
        __u64 *v = bpf_map_lookup_elem(&counters, &k);
        if (v)
            __sync_fetch_and_add(v, 1);
    }
}

SEC("uprobe/pair_entry")
int pair_entry(void *ctx)
{
    add_three();
    return 0;
}

SEC("uretprobe/pair_return")
int pair_return(void *ctx)
{
    add_three();
    return 0;
}

/* bpftrace's count(): a per-CPU hash value looked up and written back (the run holds its
 * CPU's run slot, as the kernel runs it with preemption disabled). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u64);
} counts SEC(".maps");

SEC("uprobe/percpu_count")
int percpu_count(void *ctx)
{
    __u64 key = 0;
    __u64 *v = bpf_map_lookup_elem(&counts, &key);
    __u64 n = v ? *v + 1 : 1;
    bpf_map_update_elem(&counts, &key, &n, BPF_ANY);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
