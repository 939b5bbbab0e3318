// CPU and GPU probes sharing maps: a uprobe on the app's launch_marker() (called before each
// launch; with the CUDA runtime it would be cudaLaunchKernel) stamps the launch, and the probe
// at the kernel's entry reads the stamp on the GPU and marks it seen. The stamp map is the
// host's (CPU programs use it): copied to the device before every launch, never written back.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} launch_stamp SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

SEC("uprobe//proc/self/exe:launch_marker")
int BPF_KPROBE(stamp_launch, int launch)
{
    __u32 k = 0;
    __u64 v = launch + 1;
    bpf_map_update_elem(&launch_stamp, &k, &v, BPF_ANY);
    return 0;
}

/// The vector add's context: 4 parameters, then tid, ctaid, ntid, nctaid (x, y, z).
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

SEC("kprobe/vector_add")
int seen_on_gpu(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] | ctx->ctaid[0])
        return 0;
    __u32 k = 0;
    __u64 *stamp = bpf_map_lookup_elem(&launch_stamp, &k);
    if (!stamp)
        return 0;
    __u32 s = *stamp;
    __u64 *mark = bpf_map_lookup_elem(&seen, &s);
    if (mark)
        __sync_fetch_and_add(mark, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
