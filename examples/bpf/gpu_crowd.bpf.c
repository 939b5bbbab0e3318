// A crowd of GPU threads writing a few values, as a CPU program would write them:
// - `insert_few_keys`: every thread inserts key `thread % 8` with BPF_NOEXIST into a hash that
//   holds exactly 8 entries, then adds 1 to the key's value. Only one thread per key may take a
//   slot and count it; the others find the key (-EEXIST) or wait for the thread inserting it.
//   r0 is 0, or 1 when the thread's insert failed otherwise (the map read as full) or its
//   lookup found nothing.
// - `take_ticket`: every thread increments one shared value with a plain `*v = *v + 1` and
//   counts the value it stored in `taken`; `count_per_cpu` increments its per-CPU slot (one per SM on the
//   GPU, shared by the SM's threads) with `*v += 1`. On a CPU the first races between CPUs
//   and the second cannot race; on the GPU both are one atomic add each.
// - `record_thread`: every thread writes its id (block * 256 + thread) to a ring too small for
//   all of them and to one that holds them all: every record arrives once or is counted lost.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static const __u64 (*gpu_block_idx)(__u64 *x, __u64 *y, __u64 *z) = (void *)503;
static const __u64 (*gpu_thread_idx)(__u64 *x, __u64 *y, __u64 *z) = (void *)505;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} crowd SEC(".maps");

SEC("gpu/crowd")
int insert_few_keys(void *ctx)
{
    __u64 x = 0, y = 0, z = 0;
    gpu_thread_idx(&x, &y, &z);
    __u32 key = x % 8;
    __u64 zero = 0;
    long err = bpf_map_update_elem(&crowd, &key, &zero, BPF_NOEXIST);
    if (err && err != -17)
        return 1;
    __u64 *n = bpf_map_lookup_elem(&crowd, &key);
    if (!n)
        return 1;
    __sync_fetch_and_add(n, 1);
    return 0;
}

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} tickets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u64);
} taken SEC(".maps");

SEC("gpu/ticket")
int take_ticket(void *ctx)
{
    __u32 zero = 0;
    __u64 *v = bpf_map_lookup_elem(&tickets, &zero);
    if (!v)
        return 1;
    __u64 t = *v + 1;
    *v = t;
    // Which ticket this thread took: each is taken once.
    __u32 k = t - 1;
    __u64 *n = bpf_map_lookup_elem(&taken, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

SEC("gpu/per_cpu")
int count_per_cpu(void *ctx)
{
    __u32 zero = 0;
    __u64 *v = bpf_map_lookup_elem(&per_cpu, &zero);
    if (v)
        *v += 1;
    return 0;
}

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} small_ring SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} big_ring SEC(".maps");

SEC("gpu/ring")
int record_thread(void *ctx)
{
    __u64 bx = 0, by = 0, bz = 0, tx = 0, ty = 0, tz = 0;
    gpu_block_idx(&bx, &by, &bz);
    gpu_thread_idx(&tx, &ty, &tz);
    __u32 id = bx * 256 + tx;
    bpf_ringbuf_output(&small_ring, &id, sizeof(id), 0);
    bpf_ringbuf_output(&big_ring, &id, sizeof(id), 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
