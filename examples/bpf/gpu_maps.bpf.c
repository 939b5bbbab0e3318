// Maps and helpers as a GPU program uses them: an array of counters updated atomically, a
// hash of pairs (insert, update flags, delete, lookup), a per-CPU array (one slot per SM on
// the GPU), a ring buffer and bpf_loop. The same object runs on the CPU engines, so tests can
// compare the two backends map by map.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct pair {
    __u64 a;
    __u64 b;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 32);
    __type(key, __u32);
    __type(value, struct pair);
} pairs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} events SEC(".maps");

static long add_triple(__u64 i, __u64 *acc)
{
    *acc += i * 3;
    return i == 7; // stop after the eighth call
}

SEC("uprobe")
int gpu_maps(__u64 *ctx)
{
    __u64 n = ctx[0];
    __u64 acc = 0;
    for (__u32 i = 0; i < 16; i++) {
        __u32 key = i;
        __u64 *v = bpf_map_lookup_elem(&counts, &key);
        if (v)
            __sync_fetch_and_add(v, i + n);
    }
    for (__u32 i = 0; i < 10; i++) {
        struct pair p = { .a = i, .b = i * i + n };
        bpf_map_update_elem(&pairs, &i, &p, BPF_ANY);
    }
    // Key 6 deleted and inserted again, more times than the table has slots.
    for (__u32 j = 0; j < 100; j++) {
        __u32 six = 6;
        struct pair again = { .a = 6, .b = j };
        bpf_map_delete_elem(&pairs, &six);
        bpf_map_update_elem(&pairs, &six, &again, BPF_ANY);
    }
    __u32 k = 3;
    long del = bpf_map_delete_elem(&pairs, &k);
    long del_again = bpf_map_delete_elem(&pairs, &k);
    struct pair p = { .a = 1, .b = 2 };
    k = 5;
    long noexist = bpf_map_update_elem(&pairs, &k, &p, BPF_NOEXIST);
    k = 40;
    long exist = bpf_map_update_elem(&pairs, &k, &p, BPF_EXIST);
    __u32 slot = 15;
    __u64 *last = bpf_map_lookup_elem(&counts, &slot);
    if (last)
        *last = (__u64)(del + 10) * 1000000 + (__u64)(-del_again) * 10000 + (__u64)(-noexist) * 100 + (__u64)(-exist);
    k = 5;
    struct pair *q = bpf_map_lookup_elem(&pairs, &k);
    if (q)
        acc += q->b;
    __u32 zero = 0;
    __u64 *c = bpf_map_lookup_elem(&per_cpu, &zero);
    if (c)
        *c += 1;
    struct pair ev = { .a = n, .b = acc };
    bpf_ringbuf_output(&events, &ev, sizeof(ev), 0);
    bpf_ringbuf_output(&events, &n, sizeof(n), 0);
    long loops = bpf_loop(100, add_triple, &acc, 0);
    __u32 missing = 99;
    if (bpf_map_lookup_elem(&counts, &missing))
        acc += 1000000;
    return acc * 100 + loops;
}

char LICENSE[] SEC("license") = "GPL";
