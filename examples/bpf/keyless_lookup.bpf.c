// A uprobe that looks up a key in a bloom filter with bpf_map_lookup_elem, which a map
// without keys does not take (bpf_map_peek_elem is its lookup): the kernel's verifier refuses
// it ("invalid zero-sized read"), and so must ours, with the instruction.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
    __uint(max_entries, 64);
    __type(value, __u32);
} seen SEC(".maps");

SEC("uprobe//proc/self/exe:main")
int BPF_KPROBE(main_entry, int argc)
{
    __u32 key = argc;
    if (bpf_map_lookup_elem(&seen, &key))
        return 1;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
