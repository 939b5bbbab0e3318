// bpf_send_signal and bpf_send_signal_thread from a uprobe (for examples/targets/signalled.c,
// attached by examples/loaders/count_calls.c): SIGUSR1 to the process on every tenth add()
// after the first, SIGUSR2 to the thread on every 25th; nothing for a = 0 (tests that run every
// example on a zeroed context must not be signalled). `stats` counts the calls that succeeded and the ones
// refused for an invalid signal number (-EINVAL).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(long ret)
{
    __u32 k = ret == 0 ? 0 : 1;
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p && (ret == 0 || ret == -22))
        __sync_fetch_and_add(p, 1);
}

SEC("uprobe/add")
int BPF_KPROBE(signal_on_add, unsigned long a)
{
    if (a == 0)
        return 0;
    if (a % 10 == 0)
        count(bpf_send_signal(10));
    if (a % 25 == 0)
        count(bpf_send_signal_thread(12));
    if (a == 1)
        count(bpf_send_signal(100));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
