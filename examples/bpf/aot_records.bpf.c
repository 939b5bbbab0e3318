// Used by the ahead-of-time tests (`bpftime aot compile`, then linked into the C program
// examples/aot/records.c): programs that run on a plain memory context (r1 = the bytes,
// r2 = their length), with maps the C program reads.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Records seen per first byte.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} by_tag SEC(".maps");

// [0]: records, [1]: bytes.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} totals SEC(".maps");

static void add(void *map, __u32 key, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(map, &key);
    if (v) {
        __sync_fetch_and_add(v, n);
        return;
    }
    if (bpf_map_update_elem(map, &key, &n, BPF_NOEXIST) != 0) {
        v = bpf_map_lookup_elem(map, &key);
        if (v)
            __sync_fetch_and_add(v, n);
    }
}

// FNV-1a over the record (at most 4 KiB of it), counted by its first byte.
SEC("aot")
__u64 fnv1a(__u8 *data, __u64 len)
{
    __u64 h = 0xcbf29ce484222325ULL;
    for (__u64 i = 0; i < len && i < 4096; i++) {
        h ^= data[i];
        h *= 0x100000001b3ULL;
    }
    if (len > 0)
        add(&by_tag, data[0], 1);
    add(&totals, 0, 1);
    add(&totals, 1, len);
    return h;
}

// Reads a u64 at the offset the record's first 4 bytes give: a bad offset faults.
SEC("aot")
__u64 read_at(__u8 *data, __u64 len)
{
    __u32 off = *(__u32 *)data;
    return *(__u64 *)(data + off);
}

char LICENSE[] SEC("license") = "GPL";
