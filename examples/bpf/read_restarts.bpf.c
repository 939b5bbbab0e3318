// Counts the traced process's read(2) entries (key 0), its exits with -ERESTARTSYS (key 1: a
// signal handler interrupted it and the call restarts) and its other exits (key 2).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "openat_args.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} reads SEC(".maps");

static __always_inline void bump(__u32 k)
{
    __u64 *p = bpf_map_lookup_elem(&reads, &k);
    if (p)
        __sync_fetch_and_add(p, 1);
}

SEC("tracepoint/syscalls/sys_enter_read")
int on_enter(void *ctx)
{
    bump(0);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int on_exit(struct exit_args *ctx)
{
    bump(ctx->ret == -512 ? 1 : 2);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
