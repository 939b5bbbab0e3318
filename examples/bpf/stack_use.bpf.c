// Entry and return probes on the `stack_use` target's add(), with some helper work (a hash
// update keyed by thread), to see how much of the application's stack a hit takes. A call
// add(-1, ...) is answered with a SIGUSR1 to the thread from the entry probe, one that returns
// -3 from the return probe (the target's handler leaves by siglongjmp). Reads are counted too,
// which turns system call interception on in the target.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

static __always_inline void count(void)
{
    __u32 tid = bpf_get_current_pid_tgid();
    __u64 one = 1, *n = bpf_map_lookup_elem(&hits, &tid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&hits, &tid, &one, BPF_NOEXIST);
}

/* Reads seen (system call interception on in the target). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} reads SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_read")
int on_read(void *ctx)
{
    __u32 k = 0;
    __u64 *n = bpf_map_lookup_elem(&reads, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

SEC("uprobe//proc/self/exe:add")
int BPF_KPROBE(on_add, long a)
{
    count();
    if (a == -1)
        bpf_send_signal_thread(10);
    return 0;
}

SEC("uretprobe//proc/self/exe:add")
int BPF_KRETPROBE(on_add_return, long ret)
{
    count();
    if (ret == -3)
        bpf_send_signal_thread(10);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
