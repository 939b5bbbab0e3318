// A uprobe that tail-calls a program of the kernel (bpftime's userspace-to-kernel tail call):
// the loader (examples/loaders/kernel_tail_call.c) puts a kernel program's fd in `targets`.
// stats[0] counts add() calls, stats[1] the calls whose tail call failed (a tail call that
// succeeds does not return).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} targets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static void count(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&stats, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("uprobe/add")
int add_entry(void *ctx)
{
    count(0);
    bpf_tail_call(ctx, &targets, 0);
    count(1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
