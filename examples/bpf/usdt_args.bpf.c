// A USDT program for `bpftime run` (no loader of its own): the section names the probe, and
// bpftime fills libbpf's spec maps as libbpf's loader would. Counts bpftime:tick and
// bpftime:guarded in the usdt target and sums their arguments (BPF_USDT, usdt.bpf.h).
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 6);
    __type(key, __u32);
    __type(value, __u64);
} usdt_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&usdt_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("usdt//proc/self/exe:bpftime:tick")
int BPF_USDT(on_tick, long i, long twice)
{
    add_to(0, 1);
    add_to(1, i);
    add_to(2, twice);
    return 0;
}

SEC("usdt//proc/self/exe:bpftime:guarded")
int BPF_USDT(on_guarded, long i, long twice)
{
    long arg = 0;
    add_to(3, 1);
    add_to(4, i + twice);
    // bpf_usdt_arg reads the same value BPF_USDT gave.
    if (bpf_usdt_arg(ctx, 1, &arg) == 0 && arg == twice)
        add_to(5, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
