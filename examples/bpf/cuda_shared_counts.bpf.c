// One array written by a CPU program and a GPU program, as bpftime's kernel-shared-map
// examples do: a uprobe on the app's launch_marker() counts launches in counts[1], the
// vector add's entry probe counts threads in counts[0]. Both counts reach the host map.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

SEC("uprobe//proc/self/exe:launch_marker")
int BPF_KPROBE(count_launch)
{
    __u32 k = 1;
    __u64 *n = bpf_map_lookup_elem(&counts, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

SEC("kprobe/vector_add")
int count_thread(void *ctx)
{
    __u32 k = 0;
    __u64 *n = bpf_map_lookup_elem(&counts, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
