// CO-RE: reads function arguments through a `struct pt_regs` declared here with fields in a
// different order than the kernel's; clang records CO-RE relocations that the loader fixes
// against /sys/kernel/btf/vmlinux, as for programs built against vmlinux.h.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct pt_regs {
    unsigned long si;
    unsigned long di;
    unsigned long ip;
} __attribute__((preserve_access_index));

SEC("uprobe/add")
int add_args(struct pt_regs *ctx)
{
    return ctx->di + ctx->si * 1000;
}

char LICENSE[] SEC("license") = "GPL";
