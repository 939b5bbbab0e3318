// uprobe.multi / uretprobe.multi with a glob, on the `calls` target: `*a??` matches add, fact,
// main, _start and what else the C runtime names so (gcc's __do_global_dtors_aux). Each
// program counts its hits per function (by bpf_get_func_ip).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u64);
} entries SEC(".maps"), returns SEC(".maps");

static __always_inline void count(void *map, void *ctx)
{
    __u64 ip = bpf_get_func_ip(ctx), one = 1;
    __u64 *n = bpf_map_lookup_elem(map, &ip);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(map, &ip, &one, BPF_NOEXIST);
}

SEC("uprobe.multi//proc/self/exe:*a??")
int on_entry(struct pt_regs *ctx)
{
    count(&entries, ctx);
    return 0;
}

SEC("uretprobe.multi//proc/self/exe:*a??")
int on_return(struct pt_regs *ctx)
{
    count(&returns, ctx);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
