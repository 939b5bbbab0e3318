// Entry and return probes on the longjmps target: per function, calls seen at entry and
// returns seen (functions left by longjmp never return), and the sum of ok()'s results.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 9);
    __type(key, __u32);
    __type(value, __u64);
} jump_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&jump_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:fails")
int BPF_KPROBE(fails_entry) { add_to(0, 1); return 0; }

SEC("uretprobe//proc/self/exe:fails")
int BPF_KRETPROBE(fails_return) { add_to(1, 1); return 0; }

SEC("uprobe//proc/self/exe:outer")
int BPF_KPROBE(outer_entry) { add_to(2, 1); return 0; }

SEC("uretprobe//proc/self/exe:outer")
int BPF_KRETPROBE(outer_return) { add_to(3, 1); return 0; }

SEC("uprobe//proc/self/exe:escape")
int BPF_KPROBE(escape_entry) { add_to(4, 1); return 0; }

SEC("uretprobe//proc/self/exe:escape")
int BPF_KRETPROBE(escape_return) { add_to(5, 1); return 0; }

SEC("uprobe//proc/self/exe:ok")
int BPF_KPROBE(ok_entry) { add_to(6, 1); return 0; }

SEC("uretprobe//proc/self/exe:ok")
int BPF_KRETPROBE(ok_return, long ret)
{
    add_to(7, 1);
    add_to(8, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
