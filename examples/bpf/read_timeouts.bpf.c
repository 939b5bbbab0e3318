// Counts the traced process's read(2) and setitimer(2) calls as they enter (the timeouts
// target's `read` mode: each read is left by a timer's siglongjmp).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} entered SEC(".maps");

static __always_inline void count(__u32 k)
{
    __u64 *p = bpf_map_lookup_elem(&entered, &k);
    if (p)
        __sync_fetch_and_add(p, 1);
}

SEC("tracepoint/syscalls/sys_enter_read")
int on_read(void *ctx)
{
    count(0);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_setitimer")
int on_setitimer(void *ctx)
{
    count(1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
