// GPU probes for the relocatable device code of examples/cuda/linked_a.cu and linked_b.cu:
// one probe in each unit's kernel and one in the template kernel both units define. Counts
// threads, and sums `scale`'s `factor` parameter (the context: the kernel's parameters, 8
// bytes each).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} linked_hits SEC(".maps");

static void add(__u32 k, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(&linked_hits, &k);
    if (v)
        __sync_fetch_and_add(v, n);
}

SEC("kprobe/_Z5scalePii")
int on_scale(void *ctx)
{
    add(0, 1);
    add(3, *(__u32 *)(ctx + 8));
    return 0;
}

SEC("kretprobe/fill")
int after_fill(void *ctx)
{
    add(1, 1);
    return 0;
}

SEC("kprobe/_Z5shiftILi5EEvPi")
int on_shift(void *ctx)
{
    add(2, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
