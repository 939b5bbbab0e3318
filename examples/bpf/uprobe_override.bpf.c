// Error injection and function replacement in userspace: check_password() is made to accept
// every password (bpf_override_return at its entry: its body does not run), its return probe
// sees the overridden result, and compute() is replaced by a program returning x + 1000.
// t_zero3 in the tiny target (an int3 probe: no jump fits) is made to return 7.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} override_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&override_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:check_password")
int accept_all(struct pt_regs *ctx)
{
    add_to(0, 1);
    bpf_override_return(ctx, 0);
    return 0;
}

SEC("uretprobe//proc/self/exe:check_password")
int BPF_KRETPROBE(check_password_returned, int ret)
{
    add_to(1, 1);
    add_to(2, ret == 0);
    return 0;
}

SEC("ureplace//proc/self/exe:compute")
long replace_compute(struct pt_regs *ctx)
{
    add_to(3, 1);
    return PT_REGS_PARM1(ctx) + 1000;
}

SEC("uprobe//proc/self/exe:t_zero3")
int zero_is_seven(struct pt_regs *ctx)
{
    bpf_override_return(ctx, 7);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
