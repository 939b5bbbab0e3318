// One program per kind of link a libbpf loader makes for a process: a uprobe and a
// uretprobe on libc's getpid (perf event links), a system call tracepoint (a perf event link
// too) and a raw tracepoint (a raw tracepoint link). Each counts its runs.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} runs SEC(".maps");

static void count(__u32 kind)
{
    __u64 *n = bpf_map_lookup_elem(&runs, &kind);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("uprobe/libc.so.6:getpid")
int on_getpid(void *ctx)
{
    count(0);
    return 0;
}

SEC("uretprobe/libc.so.6:getpid")
int on_getpid_return(void *ctx)
{
    count(1);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int on_openat(void *ctx)
{
    count(2);
    return 0;
}

SEC("raw_tracepoint/sys_exit")
int on_sys_exit(void *ctx)
{
    count(3);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
