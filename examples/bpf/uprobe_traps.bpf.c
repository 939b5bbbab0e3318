// Probes on the 1- to 4-byte functions of the tiny target (int3 traps: no jump fits there),
// and one in the middle of t_add4, on its 1-byte `ret` (ax holds the result there). t_sub5,
// right after t_add4, is probed first (with a jump): t_add4's own probes then find the bytes
// after its first taken, and are traps all the same.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 12);
    __type(key, __u32);
    __type(value, __u64);
} trap_stats SEC(".maps");

enum { RET1, JMP2, JMP2_ARGS, JMP2_RESULTS, ZERO3, ZERO3_RETURNS, ADD4, ADD4_RETURNS, ADD4_RESULTS, ADD4_AT_RET, SUB5, SUB5_ARGS };

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&trap_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:t_sub5")
int BPF_KPROBE(on_sub5, int a, int b)
{
    add_to(SUB5, 1);
    add_to(SUB5_ARGS, a - b);
    return 0;
}

SEC("uprobe//proc/self/exe:t_ret1")
int on_ret1(void *ctx)
{
    add_to(RET1, 1);
    return 0;
}

SEC("uprobe//proc/self/exe:t_jmp2")
int BPF_KPROBE(on_jmp2, int a, int b)
{
    add_to(JMP2, 1);
    add_to(JMP2_ARGS, a + b);
    return 0;
}

SEC("uretprobe//proc/self/exe:t_jmp2")
int BPF_KRETPROBE(on_jmp2_return, int ret)
{
    add_to(JMP2_RESULTS, ret);
    return 0;
}

SEC("uprobe//proc/self/exe:t_zero3")
int on_zero3(void *ctx)
{
    add_to(ZERO3, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:t_zero3")
int on_zero3_return(void *ctx)
{
    add_to(ZERO3_RETURNS, 1);
    return 0;
}

SEC("uprobe//proc/self/exe:t_add4")
int on_add4(void *ctx)
{
    add_to(ADD4, 1);
    return 0;
}

SEC("uretprobe//proc/self/exe:t_add4")
int BPF_KRETPROBE(on_add4_return, int ret)
{
    add_to(ADD4_RETURNS, 1);
    add_to(ADD4_RESULTS, ret);
    return 0;
}

SEC("uprobe//proc/self/exe:t_add4+3")
int on_add4_ret_insn(struct pt_regs *ctx)
{
    add_to(ADD4_AT_RET, (int)PT_REGS_RC(ctx));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
