// execve at entry and exit (tracepoint/syscalls): counts both. The exit of a successful execve
// runs in the new image, as on the kernel.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} exec_counts SEC(".maps");

static __always_inline void count(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&exec_counts, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("tracepoint/syscalls/sys_enter_execve")
int on_execve(void *ctx)
{
    count(0);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int on_execve_return(void *ctx)
{
    count(1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
