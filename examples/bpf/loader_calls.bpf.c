// Probes for the `calls` target, attached by a libbpf loader (examples/loaders/count_calls.c)
// rather than by section: the section names only the function (the loader names the binary).
// Counts add() calls, sums add()'s results and counts fact() entries.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

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

SEC("uprobe/add")
int BPF_KPROBE(add_entry)
{
    add_to(0, 1);
    return 0;
}

SEC("uretprobe/add")
int BPF_KRETPROBE(add_return, long ret)
{
    add_to(1, ret);
    return 0;
}

SEC("uprobe/fact")
int BPF_KPROBE(fact_entry)
{
    add_to(2, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
