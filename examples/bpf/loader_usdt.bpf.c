// A USDT program as libbpf writes them (usdt.bpf.h: BPF_USDT, arguments decoded from the
// probe's argument specs): counts bpftime:tick and sums its two arguments. Attached by
// examples/loaders/usdt_count.c with bpf_program__attach_usdt.
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
} stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("usdt")
int BPF_USDT(on_tick, long i, long twice)
{
    add_to(0, 1);
    add_to(1, i);
    add_to(2, twice);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
