// Programs for the system call benchmark, attached by bpftime and by the kernel: raw
// sys_enter/sys_exit programs that count the calls of one process in an array.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 target_tgid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} syscall_hits SEC(".maps");

static __always_inline int count(__u32 k)
{
    if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
        return 0;
    __u64 *v = bpf_map_lookup_elem(&syscall_hits, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("raw_tracepoint/sys_enter")
int count_enter(void *ctx)
{
    return count(0);
}

SEC("raw_tracepoint/sys_exit")
int count_exit(void *ctx)
{
    return count(1);
}

char LICENSE[] SEC("license") = "GPL";
