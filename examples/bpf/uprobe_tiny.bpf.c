// Probes on `tiny` in the calls target: `xor eax, eax; ret`, 3 bytes, shorter than a 5-byte
// jump. The kernel attaches it; so must we (the jump spills into the alignment padding after
// the function). Counts its entries and returns, and keeps its return value.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} tiny_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&tiny_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:tiny")
int on_tiny(void *ctx)
{
    add_to(0, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:tiny")
int BPF_KRETPROBE(on_tiny_return, long ret)
{
    add_to(1, 1);
    add_to(2, ret + 100);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
