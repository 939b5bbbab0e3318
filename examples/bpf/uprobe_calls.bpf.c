// Uprobes on the `calls` target: counts add() calls, keeps its last arguments, sums its
// results with a uretprobe, and counts fact() entries and returns (recursion).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

enum { ADD_CALLS, ADD_RESULTS, LAST_A, LAST_B, FACT_ENTRIES, FACT_RETURNS, FACT_RESULT_MAX };

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

static __always_inline void set(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p = v;
}

SEC("uprobe//proc/self/exe:add")
int BPF_KPROBE(on_add, long a, long b)
{
    add_to(ADD_CALLS, 1);
    set(LAST_A, a);
    set(LAST_B, b);
    return 0;
}

SEC("uretprobe//proc/self/exe:add")
int BPF_KRETPROBE(on_add_return, long ret)
{
    add_to(ADD_RESULTS, ret);
    return 0;
}

SEC("uprobe//proc/self/exe:fact")
int BPF_KPROBE(on_fact, long n)
{
    add_to(FACT_ENTRIES, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:fact")
int BPF_KRETPROBE(on_fact_return, long ret)
{
    add_to(FACT_RETURNS, 1);
    __u32 k = FACT_RESULT_MAX;
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p && ret > *p)
        *p = ret;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
