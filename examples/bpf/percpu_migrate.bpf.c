// A per-CPU counter updated as bpftrace updates its maps: look the value up, work for a while
// (bpf_loop), write value + 1 back. The kernel runs a program on one CPU from start to end, so
// the value written back is the same CPU's; the result says whether the CPU the run saw at its
// start is the one it sees at its end (1) or not (0). A test moves the running thread to
// another CPU in the middle of the work.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} counter SEC(".maps");

static long spin(__u32 i, void *ctx)
{
    *(__u64 *)ctx += i;
    return 0;
}

SEC("uprobe")
int bump(void *ctx)
{
    __u32 key = 0;
    __u64 *v = bpf_map_lookup_elem(&counter, &key);
    __u64 next = (v ? *v : 0) + 1;
    __u32 cpu = bpf_get_smp_processor_id();
    __u64 acc = 0;
    bpf_loop(1 << 21, spin, &acc, 0);
    bpf_map_update_elem(&counter, &key, &next, BPF_ANY);
    return cpu == bpf_get_smp_processor_id();
}

char LICENSE[] SEC("license") = "GPL";
