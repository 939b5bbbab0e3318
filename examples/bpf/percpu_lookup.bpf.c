// bpf_map_lookup_percpu_elem and bpf_get_numa_node_id on every call of the frames target's
// inner(): each hit counts in its CPU's slot of a per-CPU array and of a per-CPU hash, then
// sums every CPU's slots. Results (percpu_results): 0 the array's sum at the last hit, 1 the
// hash's, 2 the CPUs whose slot was found (the possible CPUs), 3 lookups of CPU 4096 that
// found something (none), 4 the NUMA node, 5 hits.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu_counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu_hash SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} percpu_results SEC(".maps");

static __always_inline void put(__u32 k, __u64 v)
{
    bpf_map_update_elem(&percpu_results, &k, &v, BPF_ANY);
}

SEC("uprobe//proc/self/exe:inner")
int count_inner(struct pt_regs *ctx)
{
    __u32 zero = 0, key = 7;
    __u64 one = 1, *v = bpf_map_lookup_elem(&per_cpu_counts, &zero);
    if (v)
        *v += 1;
    v = bpf_map_lookup_elem(&per_cpu_hash, &key);
    if (v)
        *v += 1;
    else
        bpf_map_update_elem(&per_cpu_hash, &key, &one, BPF_NOEXIST);
    __u64 array_sum = 0, hash_sum = 0, found = 0;
    for (__u32 cpu = 0; cpu < 64; cpu++) {
        __u64 *a = bpf_map_lookup_percpu_elem(&per_cpu_counts, &zero, cpu);
        __u64 *h = bpf_map_lookup_percpu_elem(&per_cpu_hash, &key, cpu);
        if (a) {
            array_sum += *a;
            found++;
        }
        if (h)
            hash_sum += *h;
    }
    put(0, array_sum);
    put(1, hash_sum);
    put(2, found);
    put(3, bpf_map_lookup_percpu_elem(&per_cpu_counts, &zero, 4096) != 0);
    put(4, bpf_get_numa_node_id());
    __u32 hits = 5;
    __u64 *h = bpf_map_lookup_elem(&percpu_results, &hits);
    if (h)
        __sync_fetch_and_add(h, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
