// Programs whose cost per GPU thread the GPU benchmarks measure: nothing, an array-map update,
// a hash lookup, one shared counter, a ring buffer record.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} counter SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} slots SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} table SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} events SEC(".maps");

SEC("gpu/empty")
int empty(void *ctx)
{
    return 0;
}

SEC("gpu/array_update")
int array_update(void *ctx)
{
    __u32 k = bpf_get_smp_processor_id() & 1023;
    __u64 *v = bpf_map_lookup_elem(&slots, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("gpu/hash_lookup")
int hash_lookup(void *ctx)
{
    __u32 k = 7;
    __u64 *v = bpf_map_lookup_elem(&table, &k);
    return v ? *v : 0;
}

SEC("gpu/counter")
int counter_add(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&counter, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("gpu/ringbuf")
int ringbuf(void *ctx)
{
    __u64 x = 1;
    bpf_ringbuf_output(&events, &x, sizeof(x), 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
