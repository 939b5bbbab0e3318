// A memory access probe (bpftime's `kprobe/__memcapture`): runs after every load and store of
// every kernel of the application. Its context starts with the access: the address, the bytes
// accessed and whether it stores; the kernel's parameters and thread ids follow, as for an
// entry probe. Counts loads and stores and their bytes, per kind (0 load, 1 store).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct access {
    __u64 address;
    __u32 bytes;
    __u32 store;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} accesses SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} bytes SEC(".maps");

SEC("kprobe/__memcapture")
int on_access(struct access *a)
{
    __u32 kind = a->store ? 1 : 0;
    __u64 *n = bpf_map_lookup_elem(&accesses, &kind);
    if (n)
        __sync_fetch_and_add(n, 1);
    __u64 *b = bpf_map_lookup_elem(&bytes, &kind);
    if (b)
        __sync_fetch_and_add(b, a->bytes);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
