// A USDT program placed with `bpftime run --attach on_mul=LIBRARY:plugin:mul` (the library is
// loaded later with dlopen): counts plugin:mul and sums its arguments.
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} mul_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&mul_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("usdt")
int BPF_USDT(on_mul, int a, int b)
{
    add_to(0, 1);
    add_to(1, a);
    add_to(2, b);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
