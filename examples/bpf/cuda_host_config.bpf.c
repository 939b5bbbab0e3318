// Maps a loader writes while the GPU uses them (no CPU program touches them): the vector
// add's entry probe adds `config[0]` (a factor the loader sets) to counts[0] and 1 to
// counts[1] in every thread, and a block's weight to counts[2] when the loader lists the
// block in `allowed`. What the loader writes between launches (bpftool through the syscall
// server) reaches the GPU before the next launch, a counter it clears starts again from 0,
// and a key it deletes is gone on the GPU too.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} allowed SEC(".maps");

/// The vector add's context: 4 parameters, then tid, ctaid, ntid, nctaid (x, y, z).
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

static __always_inline void add(__u32 k, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(&counts, &k);
    if (v)
        __sync_fetch_and_add(v, n);
}

SEC("kprobe/vector_add")
int count_with_config(struct vector_add_ctx *ctx)
{
    __u32 zero = 0;
    __u64 *factor = bpf_map_lookup_elem(&config, &zero);
    add(0, factor ? *factor : 0);
    add(1, 1);
    __u32 block = ctx->ctaid[0];
    __u64 *weight = bpf_map_lookup_elem(&allowed, &block);
    if (weight)
        add(2, *weight);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
