// GPU probes for the CUDA examples' vector add: counts kernel entries (one per thread) and
// exits, and keeps the latest exit time and a per-SM count of exits. Sections name the kernel
// mangled (entry) or by its bare name (exit), as bpftime's GPU examples do.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} exits_per_sm SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} last_exit_ns SEC(".maps");

SEC("kprobe/_Z10vector_addPKfS0_Pfi")
int on_entry(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&calls, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("kretprobe/vector_add")
int on_exit(void *ctx)
{
    __u32 k = 1;
    __u64 *v = bpf_map_lookup_elem(&calls, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    k = 0;
    __u64 *sm = bpf_map_lookup_elem(&exits_per_sm, &k);
    if (sm)
        *sm += 1;
    __u64 *t = bpf_map_lookup_elem(&last_exit_ns, &k);
    if (t)
        *t = bpf_ktime_get_ns();
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
