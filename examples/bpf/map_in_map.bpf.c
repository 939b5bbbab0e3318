// A hash of maps whose inner arrays are found by key, plus a legacy `maps` section
// definition, plus an LPM trie.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} inner_a SEC(".maps"), inner_b SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
    __uint(max_entries, 4);
    __type(key, __u32);
    __array(values, struct inner);
} outer SEC(".maps") = {
    .values = { [1] = &inner_a, [2] = &inner_b },
};

struct lpm_key {
    __u32 prefixlen;
    __u8 addr[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct lpm_key);
    __type(value, __u32);
} routes SEC(".maps");

// The pre-BTF way of defining a map.
struct bpf_map_def_legacy {
    unsigned int type, key_size, value_size, max_entries, map_flags;
};
struct bpf_map_def_legacy legacy_counts SEC("maps") = {
    .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 8, .max_entries = 2,
};

struct input {
    __u32 which;
    __u8 addr[4];
};

SEC("uprobe/route")
int route(struct input *in)
{
    __u32 slot = 0;
    void *inner = bpf_map_lookup_elem(&outer, &in->which);
    if (inner) {
        __u64 *v = bpf_map_lookup_elem(inner, &slot);
        if (v)
            *v += 1;
    }
    __u32 k = 1;
    __u64 *l = bpf_map_lookup_elem(&legacy_counts, &k);
    if (l)
        *l += 5;
    struct lpm_key key = { .prefixlen = 32 };
    __builtin_memcpy(key.addr, in->addr, 4);
    __u32 *r = bpf_map_lookup_elem(&routes, &key);
    return r ? *r : 0;
}

char LICENSE[] SEC("license") = "GPL";
