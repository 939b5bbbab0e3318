// Return probes on libc's vfork() and _setjmp(), functions that return twice: returns counted
// by result (0: a vfork child, or setjmp's first return; else the parent, or a longjmp back).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} twice_returns SEC(".maps");

static __always_inline void count(__u32 k)
{
    __u64 *p = bpf_map_lookup_elem(&twice_returns, &k);
    if (p)
        __sync_fetch_and_add(p, 1);
}

SEC("uretprobe/libc.so.6:vfork")
int BPF_KRETPROBE(vfork_return, int ret)
{
    count(ret == 0 ? 0 : 1);
    return 0;
}

SEC("uretprobe/libc.so.6:_setjmp")
int BPF_KRETPROBE(setjmp_return, int ret)
{
    count(ret == 0 ? 2 : 3);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
