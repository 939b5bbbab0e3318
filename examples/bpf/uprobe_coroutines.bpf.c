// Entry and return probes on the coroutines target's step(): calls, returns and the sum of
// the results, per coroutine (the first argument).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 6);
    __type(key, __u32);
    __type(value, __u64);
} step_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&step_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:step")
int BPF_KPROBE(step_entry, int who)
{
    add_to(who ? 1 : 0, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:step")
int BPF_KRETPROBE(step_return, int ret)
{
    int who = ret >= 1000;
    add_to(2 + who, 1);
    add_to(4 + who, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
