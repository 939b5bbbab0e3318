// Map operations in a loop, for per-operation costs measured from inside a program. Each
// program does N_OPS operations on keys that cycle through 64 values (from `in->base` for hash
// maps). They are `syscall` programs with a fixed trip count, so that the kernel loads them too
// and runs them by BPF_PROG_TEST_RUN: the benchmark runs the same programs on our JIT and in the
// kernel.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define N_OPS 1000

struct input {
    __u64 sum;
    /* First key of the hash programs (threads of the 2-thread runs use their own keys). */
    __u64 base;
};

struct key64 {
    __u64 w[8];
};

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 64); __type(key, __u32); __type(value, __u64); } arr SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 64); __type(key, __u32); __type(value, __u64); } parr SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024); __type(key, __u32); __type(value, __u64); } h32 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024); __type(key, struct key64); __type(value, __u64); } h64 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 1024); __type(key, __u32); __type(value, __u64); } ph32 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 20); } rb SEC(".maps");

SEC("syscall")
int empty_loop(struct input *in)
{
    __u64 sum = 0;
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = i & 63;
        sum += k;
        asm volatile("" : "+r"(sum));
    }
    in->sum = sum;
    return 0;
}

SEC("syscall")
int array_lookup(struct input *in)
{
    __u64 sum = 0;
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = i & 63;
        __u64 *v = bpf_map_lookup_elem(&arr, &k);
        if (v)
            sum += *v;
    }
    in->sum = sum;
    return 0;
}

SEC("syscall")
int percpu_array_lookup(struct input *in)
{
    __u64 sum = 0;
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = i & 63;
        __u64 *v = bpf_map_lookup_elem(&parr, &k);
        if (v)
            sum += *v;
    }
    in->sum = sum;
    return 0;
}

/* Per-CPU counting, as tools count events: every thread adds to the same key, each into its
 * own CPU's value (the 2-thread rows show whether CPUs take turns at a cache line). */
static __always_inline int count_at_key_0(void *map, struct input *in)
{
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = 0;
        __u64 *v = bpf_map_lookup_elem(map, &k);
        if (v)
            *v += 1;
    }
    return 0;
}

SEC("syscall")
int percpu_array_count(struct input *in)
{
    return count_at_key_0(&parr, in);
}

SEC("syscall")
int percpu_hash_count(struct input *in)
{
    return count_at_key_0(&ph32, in);
}

SEC("syscall")
int hash_lookup_u32(struct input *in)
{
    __u64 sum = 0;
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = in->base + (i & 63);
        __u64 *v = bpf_map_lookup_elem(&h32, &k);
        if (v)
            sum += *v;
    }
    in->sum = sum;
    return 0;
}

SEC("syscall")
int hash_update_u32(struct input *in)
{
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = in->base + (i & 63);
        bpf_map_update_elem(&h32, &k, &i, BPF_ANY);
    }
    return 0;
}

/* The latency tools' pattern: a key added (at a function's entry) and deleted (at its return). */
SEC("syscall")
int hash_insert_delete(struct input *in)
{
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = in->base + 512 + (i & 63);
        bpf_map_update_elem(&h32, &k, &i, BPF_ANY);
        bpf_map_delete_elem(&h32, &k);
    }
    return 0;
}

SEC("syscall")
int hash_lookup_64b(struct input *in)
{
    __u64 sum = 0;
    struct key64 k = {};
    for (__u64 i = 0; i < N_OPS; i++) {
        k.w[0] = in->base + (i & 63);
        __u64 *v = bpf_map_lookup_elem(&h64, &k);
        if (v)
            sum += *v;
    }
    in->sum = sum;
    return 0;
}

SEC("syscall")
int hash_update_64b(struct input *in)
{
    struct key64 k = {};
    for (__u64 i = 0; i < N_OPS; i++) {
        k.w[0] = in->base + (i & 63);
        bpf_map_update_elem(&h64, &k, &i, BPF_ANY);
    }
    return 0;
}

SEC("syscall")
int percpu_hash_lookup(struct input *in)
{
    __u64 sum = 0;
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = in->base + (i & 63);
        __u64 *v = bpf_map_lookup_elem(&ph32, &k);
        if (v)
            sum += *v;
    }
    in->sum = sum;
    return 0;
}

SEC("syscall")
int percpu_hash_update(struct input *in)
{
    for (__u64 i = 0; i < N_OPS; i++) {
        __u32 k = in->base + (i & 63);
        bpf_map_update_elem(&ph32, &k, &i, BPF_ANY);
    }
    return 0;
}

SEC("syscall")
int ringbuf_reserve_submit(struct input *in)
{
    for (__u64 i = 0; i < N_OPS; i++) {
        __u64 *e = bpf_ringbuf_reserve(&rb, 8, 0);
        if (!e)
            return 1;
        *e = i;
        bpf_ringbuf_submit(e, 0);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
