// Launch latency, a CPU clock and a GPU clock compared: a uprobe on the app's launch_marker()
// (called right before each launch; with the CUDA runtime it would be cudaLaunchKernel) takes
// bpf_ktime_get_ns on the CPU, and the first thread of the launch takes bpf_ktime_get_ns again
// at the kernel's entry, on the GPU, and adds the difference to a log2 histogram (ns). Both
// read CLOCK_MONOTONIC: on the GPU it is %globaltimer moved onto the host's clock.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} launched_at SEC(".maps");

/// Slot i counts launches whose latency has i as its highest set bit (ns).
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} latency_log2 SEC(".maps");

/// Launches whose kernel saw a time before the launch (clocks that do not compare).
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} before_launch SEC(".maps");

SEC("uprobe//proc/self/exe:launch_marker")
int BPF_KPROBE(launch_time)
{
    __u32 k = 0;
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&launched_at, &k, &now, BPF_ANY);
    return 0;
}

/// The vector add's context: 4 parameters, then tid, ctaid, ntid, nctaid (x, y, z).
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

SEC("kprobe/vector_add")
int kernel_start(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] | ctx->ctaid[0])
        return 0;
    __u64 now = bpf_ktime_get_ns();
    __u32 k = 0;
    __u64 *at = bpf_map_lookup_elem(&launched_at, &k);
    if (!at || !*at)
        return 0;
    if (now < *at) {
        __u64 *early = bpf_map_lookup_elem(&before_launch, &k);
        if (early)
            __sync_fetch_and_add(early, 1);
        return 0;
    }
    __u64 d = now - *at;
    __u32 bit = 0;
    for (int i = 32; i > 0; i >>= 1)
        if (d >> i) {
            d >>= i;
            bit += i;
        }
    __u64 *slot = bpf_map_lookup_elem(&latency_log2, &bit);
    if (slot)
        __sync_fetch_and_add(slot, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
