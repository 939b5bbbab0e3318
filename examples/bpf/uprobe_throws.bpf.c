// Entry and return probes on the throws target's C++ functions (mangled names): per
// function, calls seen at entry and returns seen (a function left by an exception does not
// return), and the sum of catcher()'s results.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 7);
    __type(key, __u32);
    __type(value, __u64);
} throw_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&throw_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:_Z7throweri")
int BPF_KPROBE(thrower_entry) { add_to(0, 1); return 0; }

SEC("uretprobe//proc/self/exe:_Z7throweri")
int BPF_KRETPROBE(thrower_return) { add_to(1, 1); return 0; }

SEC("uprobe//proc/self/exe:_Z3midi")
int BPF_KPROBE(mid_entry) { add_to(2, 1); return 0; }

SEC("uretprobe//proc/self/exe:_Z3midi")
int BPF_KRETPROBE(mid_return) { add_to(3, 1); return 0; }

SEC("uprobe//proc/self/exe:_Z7catcheri")
int BPF_KPROBE(catcher_entry) { add_to(4, 1); return 0; }

SEC("uretprobe//proc/self/exe:_Z7catcheri")
int BPF_KRETPROBE(catcher_return, int ret)
{
    add_to(5, 1);
    add_to(6, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
