// A uprobe under a license the kernel does not take as GPL-compatible that calls
// bpf_trace_printk, which the kernel keeps for GPL-compatible programs: refused at load, by
// the kernel's verifier and by ours, with the instruction.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

SEC("uprobe")
int says_hello(struct pt_regs *ctx)
{
    bpf_printk("hello");
    return 0;
}

char LICENSE[] SEC("license") = "Proprietary";
