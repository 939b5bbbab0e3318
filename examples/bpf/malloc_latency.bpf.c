// The demo: counts malloc calls by requested size (log2 buckets) and times them with a
// uprobe/uretprobe pair (per-thread start time in a hash, latency histogram in ns, log2).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 32);
    __type(key, __u32);
    __type(value, __u64);
} size_log2 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 32);
    __type(key, __u32);
    __type(value, __u64);
} latency_ns_log2 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} start SEC(".maps");

static __always_inline __u32 log2l(__u64 v)
{
    __u32 r = 0;
    for (int i = 0; i < 63 && v > 1; i++) {
        v >>= 1;
        r++;
    }
    return r > 31 ? 31 : r;
}

SEC("uprobe/libc.so.6:malloc")
int BPF_KPROBE(malloc_enter, __u64 size)
{
    __u32 b = log2l(size);
    __u64 *c = bpf_map_lookup_elem(&size_log2, &b);
    if (c)
        __sync_fetch_and_add(c, 1);
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&start, &tid, &now, BPF_ANY);
    return 0;
}

SEC("uretprobe/libc.so.6:malloc")
int BPF_KRETPROBE(malloc_exit)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 *t = bpf_map_lookup_elem(&start, &tid);
    if (!t)
        return 0;
    __u32 b = log2l(bpf_ktime_get_ns() - *t);
    __u64 *c = bpf_map_lookup_elem(&latency_ns_log2, &b);
    if (c)
        __sync_fetch_and_add(c, 1);
    bpf_map_delete_elem(&start, &tid);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
