// Counts malloc() calls per process, for a skeleton-based libbpf loader
// (examples/loaders/malloc_per_pid.c): a `const volatile` setting the loader writes through the
// skeleton before loading (only processes whose name starts with `comm_prefix`), a hash map
// keyed by pid that the loader polls.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

const volatile char comm_prefix[16] = "";

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} calls SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(count_malloc, unsigned long size)
{
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    for (int i = 0; i < 16 && comm_prefix[i]; i++)
        if (comm[i] != comm_prefix[i])
            return 0;
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    __u64 one = 1, *n = bpf_map_lookup_elem(&calls, &pid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&calls, &pid, &one, BPF_NOEXIST);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
