// Maps of several kinds, global data (.rodata, .data, .bss), a local function and
// bpf_trace_printk. Run with `bpftime vm run maps_globals.bpf.o --mem <16 bytes> --dump-maps`.
//
// Input (r1): { u64 key; u64 delta }. For each run: counts[key] += delta, hist[log2(delta)]++,
// stats (per-CPU) counts runs, recent (LRU) remembers the key, events (queue) records it.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct input {
    __u64 key;
    __u64 delta;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u64);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} hist SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8);
    __type(key, __u64);
    __type(value, __u32);
} recent SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_QUEUE);
    __uint(max_entries, 16);
    __type(value, __u64);
} events SEC(".maps");

const volatile __u64 scale = 3;       // .rodata
__u64 runs = 0;                        // .bss
__u64 last_key = 7;                    // .data
char greeting[] = "hello";             // .data

static __attribute__((noinline)) __u32 log2_of(__u64 v)
{
    __u32 r = 0;
    while (v > 1 && r < 63) {
        v >>= 1;
        r++;
    }
    return r;
}

SEC("uprobe/count")
int count(struct input *in)
{
    __u64 key = in->key, delta = in->delta * scale;
    __u64 *c = bpf_map_lookup_elem(&counts, &key);
    if (c)
        __sync_fetch_and_add(c, delta);
    else
        bpf_map_update_elem(&counts, &key, &delta, BPF_NOEXIST);

    __u32 bucket = log2_of(delta);
    __u64 *h = bpf_map_lookup_elem(&hist, &bucket);
    if (h)
        __sync_fetch_and_add(h, 1);

    __u32 zero = 0;
    __u64 *s = bpf_map_lookup_elem(&stats, &zero);
    if (s)
        *s += 1;

    __u32 one = 1;
    bpf_map_update_elem(&recent, &key, &one, BPF_ANY);
    bpf_map_push_elem(&events, &key, BPF_EXIST);

    __sync_fetch_and_add(&runs, 1);
    last_key = key;
    bpf_printk("%s: key %llu += %llu", greeting, key, delta);
    return bucket;
}

char LICENSE[] SEC("license") = "GPL";
