// Entry and return probes on the goroutines target's main.add (a Go function: Go's register
// ABI passes its arguments in ax and bx and returns in ax): counts both ends and sums the
// arguments and the results; and the one-byte write(2) calls the goroutines make (entries, and
// exits that wrote the byte).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 6);
    __type(key, __u32);
    __type(value, __u64);
} go_stats SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&go_stats, &k);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:main.add")
int on_go_add(struct pt_regs *ctx)
{
    add_to(0, 1);
    add_to(1, ctx->rax + ctx->rbx);
    return 0;
}

SEC("uretprobe//proc/self/exe:main.add")
int on_go_add_return(struct pt_regs *ctx)
{
    add_to(2, 1);
    add_to(3, ctx->rax);
    return 0;
}

// The tracepoints' records (common fields, the call number, then the arguments or the result).
struct sys_enter {
    __u64 common;
    long nr;
    unsigned long args[6];
};

struct sys_exit {
    __u64 common;
    long nr;
    long ret;
};

SEC("tracepoint/syscalls/sys_enter_write")
int on_write(struct sys_enter *ctx)
{
    if (ctx->args[2] == 1)
        add_to(4, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int on_write_exit(struct sys_exit *ctx)
{
    if (ctx->ret == 1)
        add_to(5, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
