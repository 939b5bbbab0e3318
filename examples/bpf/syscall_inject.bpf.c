// Error injection at a system call (a bpftime extension, as its error-inject example uses: the
// kernel offers bpf_override_return to kprobes on functions marked for it, not to tracepoints):
// every openat(2) of a path under /tmp/bpftime-inject fails with -EACCES without being made;
// the exit program sees the injected result.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "openat_args.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

enum { INJECTED, SEEN_EACCES };

static __always_inline void bump(__u32 k)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        __sync_fetch_and_add(p, 1);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int inject(struct enter_args *ctx)
{
    static const char prefix[] = "/tmp/bpftime-inject";
    char name[sizeof(prefix)] = {};
    bpf_probe_read_user_str(name, sizeof(name), ctx->filename);
    for (int i = 0; i < sizeof(prefix) - 1; i++)
        if (name[i] != prefix[i])
            return 0;
    bump(INJECTED);
    bpf_override_return(ctx, -13);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int seen(struct exit_args *ctx)
{
    if (ctx->ret == -13)
        bump(SEEN_EACCES);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
