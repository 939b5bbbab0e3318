// Counts add() calls of the `forks` target in a per-CPU array and a hash (the lazily set-up
// parts of a probe hit: the CPU count, the map lock), in its forked children too.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu_calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} calls SEC(".maps");

SEC("uprobe//proc/self/exe:add")
int on_add(void *ctx)
{
    __u32 k = 0;
    __u64 *n = bpf_map_lookup_elem(&per_cpu_calls, &k);
    if (n)
        *n += 1;
    __u64 one = 1, *c = bpf_map_lookup_elem(&calls, &k);
    if (!c && bpf_map_update_elem(&calls, &k, &one, BPF_NOEXIST) == 0)
        return 0;
    /* Another process or thread inserted it first: count on its element. */
    if (!c)
        c = bpf_map_lookup_elem(&calls, &k);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
