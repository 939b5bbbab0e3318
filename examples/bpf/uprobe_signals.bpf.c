// Entry and return probes on add() (the signals and execs targets): counts both and sums the
// arguments and the results (equal when every call is seen at both ends).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} signal_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&signal_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:add")
int BPF_KPROBE(on_add, long a, long b)
{
    add_to(0, 1);
    add_to(1, a + b);
    return 0;
}

SEC("uretprobe//proc/self/exe:add")
int BPF_KRETPROBE(on_add_return, long ret)
{
    add_to(2, 1);
    add_to(3, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
