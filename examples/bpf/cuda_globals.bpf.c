// Entries and exits of globals.cu's kernel (a kernel with __constant__ and __device__
// variables): counts[0] and counts[1].
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

static __always_inline int count(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&counts, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("kprobe/scale_copy")
int scale_copy_entry(void *ctx)
{
    return count(0);
}

SEC("kretprobe/scale_copy")
int scale_copy_exit(void *ctx)
{
    return count(1);
}

char LICENSE[] SEC("license") = "GPL";
