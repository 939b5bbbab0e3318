// A function-latency histogram, as libbpf tools build them: the entry probe keeps the time per
// thread, the return probe adds the call's duration to a log2 histogram (ns). Attached by
// examples/loaders/func_latency.c to any function.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u64);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} hist SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(func_entry)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&start, &tid, &now, BPF_ANY);
    return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(func_return)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 *t0 = bpf_map_lookup_elem(&start, &tid);
    if (!t0)
        return 0;
    __u64 d = bpf_ktime_get_ns() - *t0;
    bpf_map_delete_elem(&start, &tid);
    __u32 slot = 0;
    while (d > 1 && slot < 63) {
        d >>= 1;
        slot++;
    }
    __u64 *n = bpf_map_lookup_elem(&hist, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
