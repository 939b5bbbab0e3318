// Inserting more distinct keys than a hash holds: an LRU hash makes room by evicting an entry
// (every insert succeeds and it holds max_entries entries), a plain hash refuses the inserts
// past its capacity with -E2BIG. The context's first u64 is how many keys to insert; r0 is
// the LRU's failed inserts, `failed[1]` the plain hash's. `churn` inserts and deletes that
// many distinct keys one after the other in `churned`, a hash of 64: every insert succeeds
// (deleted entries make room); r0 is the failed ones.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} lru SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} plain SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} failed SEC(".maps");

SEC("gpu/lru")
int insert_many(__u64 *ctx)
{
    __u64 n = ctx[0], lru_failed = 0, plain_failed = 0;
    for (__u32 i = 0; i < n && i < 4096; i++) {
        __u32 key = i * 2654435761u;
        __u64 value = i;
        if (bpf_map_update_elem(&lru, &key, &value, BPF_ANY))
            lru_failed++;
        if (bpf_map_update_elem(&plain, &key, &value, BPF_ANY))
            plain_failed++;
    }
    __u32 k = 0;
    bpf_map_update_elem(&failed, &k, &lru_failed, BPF_ANY);
    k = 1;
    bpf_map_update_elem(&failed, &k, &plain_failed, BPF_ANY);
    return lru_failed;
}

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} churned SEC(".maps");

SEC("gpu/churn")
int churn(__u64 *ctx)
{
    __u64 n = ctx[0], failed = 0;
    for (__u32 i = 0; i < n && i < 4096; i++) {
        __u32 key = i * 2654435761u;
        __u64 value = i;
        if (bpf_map_update_elem(&churned, &key, &value, BPF_NOEXIST))
            failed++;
        bpf_map_delete_elem(&churned, &key);
    }
    return failed;
}

char LICENSE[] SEC("license") = "GPL";
