// Hash maps a GPU probe shares with the host. A uprobe on the app's launch_marker(launch)
// (called before each launch) adds block `launch` to `watched`; a loader (or bpftool) may fill
// `weights` before the app starts. At the vector add's entry each thread of a watched block
// adds its block's weight (1 when it has none) to `seen[block]`. `watched` is the host's (a CPU
// program writes it): copied to the GPU before every launch. `weights` is the GPU's: it starts
// from what the region holds when the app first launches a probed kernel.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} watched SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} weights SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

SEC("uprobe//proc/self/exe:launch_marker")
int BPF_KPROBE(watch_block, int launch)
{
    __u32 block = launch;
    __u64 one = 1;
    bpf_map_update_elem(&watched, &block, &one, BPF_ANY);
    return 0;
}

/// The vector add's context: 4 parameters, then tid, ctaid, ntid, nctaid (x, y, z).
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

SEC("kprobe/vector_add")
int count_watched(struct vector_add_ctx *ctx)
{
    __u32 block = ctx->ctaid[0];
    if (!bpf_map_lookup_elem(&watched, &block))
        return 0;
    __u64 *w = bpf_map_lookup_elem(&weights, &block);
    __u64 add = w ? *w : 1;
    __u64 *s = bpf_map_lookup_elem(&seen, &block);
    if (s)
        __sync_fetch_and_add(s, add);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
