// Counts libc free() calls of one process (`target[0]` = its pid, 0 = any process): compared
// with the kernel's count for the same target, it shows that nothing the agent does itself
// reaches a program.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} target SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} frees SEC(".maps");

SEC("uprobe/libc.so.6:free")
int count_free(struct pt_regs *ctx)
{
    __u32 zero = 0;
    __u32 *t = bpf_map_lookup_elem(&target, &zero);
    if (t && *t && *t != bpf_get_current_pid_tgid() >> 32)
        return 0;
    __u64 *c = bpf_map_lookup_elem(&frees, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
