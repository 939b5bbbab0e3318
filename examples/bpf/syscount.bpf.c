// syscount in userspace: raw sys_enter/sys_exit programs counting every system call of the
// traced process by number, with a log2 histogram of their latencies (ns).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} started SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 512);
    __type(key, __u32);
    __type(value, __u64);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} latency_log2 SEC(".maps");

SEC("raw_tracepoint/sys_enter")
int on_enter(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&started, &tid, &now, BPF_ANY);
    return 0;
}

SEC("raw_tracepoint/sys_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 *t0 = bpf_map_lookup_elem(&started, &tid);
    if (!t0)
        return 0;
    __u64 d = bpf_ktime_get_ns() - *t0;
    bpf_map_delete_elem(&started, &tid);
    // The call number: pt_regs->orig_ax (offset 120) of the regs in args[0].
    __u64 nr = 0;
    bpf_probe_read_kernel(&nr, sizeof nr, (void *)(ctx->args[0] + 120));
    __u32 key = (__u32)nr;
    __u64 one = 1, *n = bpf_map_lookup_elem(&calls, &key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&calls, &key, &one, BPF_NOEXIST);
    __u32 slot = 0;
    while (d > 1 && slot < 63) {
        d >>= 1;
        slot++;
    }
    __u64 *b = bpf_map_lookup_elem(&latency_log2, &slot);
    if (b)
        __sync_fetch_and_add(b, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
