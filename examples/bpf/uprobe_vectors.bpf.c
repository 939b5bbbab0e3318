// Probes on the `vectors` target's leaf: the entry records each call in a hash map of
// 64-byte values (key and value copied through the helpers) and counts calls; the return sums
// the results.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct call {
    __u64 a, b;
    char comm[16];
    __u64 pad[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u64);
    __type(value, struct call);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:leaf")
int BPF_KPROBE(on_leaf, long a, long b)
{
    struct call c = {.a = a, .b = b};
    __u64 key = (__u64)a % 1024;
    bpf_get_current_comm(c.comm, sizeof(c.comm));
    bpf_map_update_elem(&calls, &key, &c, BPF_ANY);
    add_to(0, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:leaf")
int BPF_KRETPROBE(on_leaf_return, long ret)
{
    add_to(1, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
