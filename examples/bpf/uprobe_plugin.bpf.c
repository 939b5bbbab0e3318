// A uprobe on a library that is loaded with dlopen after the process starts.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} mul_stats SEC(".maps");

SEC("uprobe/libplugin.so:plugin_mul")
int BPF_KPROBE(on_mul, int a, int b)
{
    __u32 k = 0;
    __u64 *calls = bpf_map_lookup_elem(&mul_stats, &k);
    if (calls)
        __sync_fetch_and_add(calls, 1);
    k = 1;
    __u64 *sum_a = bpf_map_lookup_elem(&mul_stats, &k);
    if (sum_a)
        __sync_fetch_and_add(sum_a, a);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
