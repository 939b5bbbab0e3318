// Used by the multi-process tests: every run adds 1 to counts[key] (inserting it if needed,
// retrying when another process inserted it first) and to total[0], with atomic adds.
// `overwrite` replaces values instead, to keep the map's writers busy.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} total SEC(".maps");

SEC("uprobe/add")
int add(__u32 *key)
{
    __u32 k = *key;
    __u64 *v = bpf_map_lookup_elem(&counts, &k);
    if (!v) {
        __u64 one = 1;
        if (bpf_map_update_elem(&counts, &k, &one, BPF_NOEXIST) == 0)
            goto array;
        v = bpf_map_lookup_elem(&counts, &k);
        if (!v)
            return 1;
    }
    __sync_fetch_and_add(v, 1);
array:;
    __u32 zero = 0;
    __u64 *t = bpf_map_lookup_elem(&total, &zero);
    if (t)
        __sync_fetch_and_add(t, 1);
    return 0;
}

SEC("uprobe/overwrite")
int overwrite(__u32 *key)
{
    __u32 k = *key;
    __u64 v = k * 1000;
    bpf_map_update_elem(&counts, &k, &v, BPF_ANY);
    bpf_map_delete_elem(&counts, &k);
    bpf_map_update_elem(&counts, &k, &v, BPF_ANY);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
