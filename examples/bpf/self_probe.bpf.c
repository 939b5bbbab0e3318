// Probes a loader puts on itself, as libbpf's own examples do: a uprobe and a uretprobe for
// pid 0 (the loader) on a function of `/proc/self/exe`, one named in its section (every
// process), and a system call tracepoint whose program counts the loader's own write(2)s
// (`examples/loaders/self_probe.c`). The kernel runs them in the loader; so must we.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/* stats[0]: calls of self_add; [1]: the sum of their results; [2]: the loader's write(2)s;
 * [3]: calls of self_sub; [4]: the sum of its first arguments. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 5);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

/* config[0]: the loader's pid (the tracepoint fires in every process). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} config SEC(".maps");

static __always_inline void add_to(__u32 k, __u64 by)
{
    __u64 *v = bpf_map_lookup_elem(&stats, &k);
    if (v)
        __sync_fetch_and_add(v, by);
}

SEC("uprobe")
int on_add(struct pt_regs *ctx)
{
    add_to(0, 1);
    return 0;
}

SEC("uretprobe")
int on_add_return(struct pt_regs *ctx)
{
    add_to(1, (int)PT_REGS_RC(ctx));
    return 0;
}

SEC("uprobe//proc/self/exe:self_sub")
int on_sub(struct pt_regs *ctx)
{
    add_to(3, 1);
    add_to(4, (int)PT_REGS_PARM1(ctx));
    return 0;
}

SEC("tp/syscalls/sys_enter_write")
int on_write(void *ctx)
{
    __u32 k = 0;
    __u64 *pid = bpf_map_lookup_elem(&config, &k);
    if (pid && (bpf_get_current_pid_tgid() >> 32) == *pid)
        add_to(2, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
