// Runaway probes on the `calls` target's add(): one loops for ever, one asks bpf_loop for the
// most iterations it allows. The loop budget must end every hit quickly and the application
// must run on with its own results; `hits` counts the hits that started.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

static __always_inline void count(__u32 k)
{
    __u64 *p = bpf_map_lookup_elem(&hits, &k);
    if (p)
        __sync_fetch_and_add(p, 1);
}

SEC("uprobe//proc/self/exe:add")
int spin(struct pt_regs *ctx)
{
    count(0);
    volatile __u64 x = 0;
    while (x != ~0ULL)
        x++;
    return 0;
}

static long step(__u64 index, void *data)
{
    return 0;
}

SEC("uprobe//proc/self/exe:add")
int many_loops(struct pt_regs *ctx)
{
    count(1);
    bpf_loop(1 << 23, step, 0, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
