// Map helpers called from programs, on every kind of map, with the answers written down: return
// codes of updates, deletes, pushes and pops with each flag, what lookups find afterwards,
// per-CPU values seen from every CPU, ring buffer queries. Raw tracepoint programs, so that the
// kernel runs them too (BPF_PROG_TEST_RUN): tests/tests/map_helpers.rs runs each one in the
// kernel and on both of our engines and compares what they wrote to `out`, slot by slot.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define OUT_SLOTS 64

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, OUT_SLOTS); __type(key, __u32); __type(value, __s64); } out SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } hash SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8); __type(key, __u64); __type(value, __u32); } hash_small_values SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 2); __type(key, __u32); __type(value, __u64); __uint(map_flags, BPF_F_NO_PREALLOC); } hash_no_prealloc SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } array SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } lru SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } percpu_hash SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } percpu_array SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_QUEUE); __uint(max_entries, 3); __type(value, __u64); } queue SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_STACK); __uint(max_entries, 3); __type(value, __u64); } stack SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_BLOOM_FILTER); __uint(max_entries, 16); __type(value, __u32); } bloom SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } ring SEC(".maps");

struct lpm_key {
    __u32 prefixlen;
    __u8 addr[4];
};
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 8); __type(key, struct lpm_key); __type(value, __u64); __uint(map_flags, BPF_F_NO_PREALLOC); } lpm SEC(".maps");

struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, __u32); } chain SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); } chain_runs SEC(".maps");

/* out[*i] = v, then the next slot. */
static __always_inline void put(__u32 *i, __s64 v)
{
    __u32 k = *i;
    __s64 *slot = bpf_map_lookup_elem(&out, &k);
    if (slot)
        *slot = v;
    *i = k + 1;
}

/* The value a lookup finds, or -1 for none. */
static __always_inline __s64 found(void *p)
{
    return p ? (__s64)*(__u64 *)p : -1;
}

SEC("raw_tp/sys_enter")
int hash_flags(void *ctx)
{
    __u32 i = 0, k;
    __u64 v = 10;
    k = 1;
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_NOEXIST));
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_NOEXIST));
    k = 2;
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_EXIST));
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_F_LOCK));
    put(&i, bpf_map_update_elem(&hash, &k, &v, 8));
    k = 1;
    v = 11;
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_EXIST));
    put(&i, found(bpf_map_lookup_elem(&hash, &k)));
    /* Fill it: 4 keys. A fifth is refused; an update of a key it has is not. */
    for (k = 2; k <= 5; k++) {
        v = 100 + k;
        put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_ANY));
    }
    k = 4;
    v = 44;
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_ANY));
    put(&i, found(bpf_map_lookup_elem(&hash, &k)));
    k = 9;
    put(&i, bpf_map_delete_elem(&hash, &k));
    k = 2;
    put(&i, bpf_map_delete_elem(&hash, &k));
    put(&i, found(bpf_map_lookup_elem(&hash, &k)));
    k = 5;
    v = 55;
    put(&i, bpf_map_update_elem(&hash, &k, &v, BPF_NOEXIST));
    /* Written through the pointer a lookup gave. */
    __u64 *p = bpf_map_lookup_elem(&hash, &k);
    if (p)
        *p += 1;
    put(&i, found(bpf_map_lookup_elem(&hash, &k)));
    /* A 4-byte value, replaced in place. */
    __u64 k64 = 7;
    __u32 small = 0xfffffffe;
    put(&i, bpf_map_update_elem(&hash_small_values, &k64, &small, BPF_ANY));
    small = 3;
    put(&i, bpf_map_update_elem(&hash_small_values, &k64, &small, BPF_ANY));
    __u32 *sp = bpf_map_lookup_elem(&hash_small_values, &k64);
    put(&i, sp ? *sp : -1);
    /* Allocated on insert: the same answers. */
    k = 1;
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_NOEXIST));
    k = 2;
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_NOEXIST));
    k = 3;
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_NOEXIST));
    k = 1;
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_ANY));
    put(&i, bpf_map_delete_elem(&hash_no_prealloc, &k));
    k = 3;
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_EXIST));
    put(&i, bpf_map_update_elem(&hash_no_prealloc, &k, &v, BPF_NOEXIST));
    put(&i, found(bpf_map_lookup_elem(&hash_no_prealloc, &k)));
    return i;
}

/* An LRU hash short of full (which key a full one evicts is the kernel's choice). */
SEC("raw_tp/sys_enter")
int lru_flags(void *ctx)
{
    __u32 i = 0, k = 1;
    __u64 v = 3;
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_NOEXIST));
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_NOEXIST));
    k = 2;
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_EXIST));
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_F_LOCK));
    put(&i, found(bpf_map_lookup_elem(&lru, &k)));
    v = 4;
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_ANY));
    k = 1;
    v = 5;
    put(&i, bpf_map_update_elem(&lru, &k, &v, BPF_EXIST));
    put(&i, found(bpf_map_lookup_elem(&lru, &k)));
    put(&i, bpf_map_delete_elem(&lru, &k));
    put(&i, bpf_map_delete_elem(&lru, &k));
    put(&i, found(bpf_map_lookup_elem(&lru, &k)));
    k = 2;
    put(&i, found(bpf_map_lookup_elem(&lru, &k)));
    return i;
}

SEC("raw_tp/sys_enter")
int array_flags(void *ctx)
{
    __u32 i = 0, k = 1;
    __u64 v = 5;
    put(&i, bpf_map_update_elem(&array, &k, &v, BPF_NOEXIST));
    put(&i, bpf_map_update_elem(&array, &k, &v, BPF_EXIST));
    put(&i, bpf_map_update_elem(&array, &k, &v, BPF_ANY));
    put(&i, bpf_map_update_elem(&array, &k, &v, 8));
    put(&i, found(bpf_map_lookup_elem(&array, &k)));
    put(&i, bpf_map_delete_elem(&array, &k));
    k = 4;
    put(&i, bpf_map_update_elem(&array, &k, &v, BPF_ANY));
    put(&i, found(bpf_map_lookup_elem(&array, &k)));
    k = 0;
    put(&i, found(bpf_map_lookup_elem(&array, &k)));
    put(&i, bpf_map_update_elem(&array, &k, &v, BPF_F_LOCK));
    return i;
}

/* Every CPU's value of `key`: how many CPUs have one, and their sum; then a CPU past them all. */
static __always_inline void every_cpu(__u32 *i, void *map, __u32 key)
{
    __s64 n = 0, sum = 0;
    for (__u32 cpu = 0; cpu < 512; cpu++) {
        __u64 *v = bpf_map_lookup_percpu_elem(map, &key, cpu);
        if (!v)
            break;
        n++;
        sum += *v;
    }
    put(i, n);
    put(i, sum);
    put(i, found(bpf_map_lookup_percpu_elem(map, &key, 1 << 20)));
}

SEC("raw_tp/sys_enter")
int percpu_values(void *ctx)
{
    __u32 i = 0, k = 1;
    __u64 v = 7;
    put(&i, bpf_map_update_elem(&percpu_hash, &k, &v, BPF_NOEXIST));
    put(&i, found(bpf_map_lookup_elem(&percpu_hash, &k)));
    every_cpu(&i, &percpu_hash, k);
    v = 8;
    put(&i, bpf_map_update_elem(&percpu_hash, &k, &v, BPF_EXIST));
    every_cpu(&i, &percpu_hash, k);
    put(&i, bpf_map_delete_elem(&percpu_hash, &k));
    put(&i, found(bpf_map_lookup_elem(&percpu_hash, &k)));
    put(&i, bpf_map_update_elem(&percpu_array, &k, &v, BPF_ANY));
    __u64 *p = bpf_map_lookup_elem(&percpu_array, &k);
    if (p)
        *p += 2;
    every_cpu(&i, &percpu_array, k);
    put(&i, bpf_map_delete_elem(&percpu_array, &k));
    k = 4;
    put(&i, found(bpf_map_lookup_elem(&percpu_array, &k)));
    return i;
}

SEC("raw_tp/sys_enter")
int queue_and_stack(void *ctx)
{
    __u32 i = 0;
    __u64 v, got = 0;
    for (v = 1; v <= 4; v++)
        put(&i, bpf_map_push_elem(&queue, &v, BPF_ANY));
    v = 5;
    put(&i, bpf_map_push_elem(&queue, &v, BPF_EXIST));
    put(&i, bpf_map_push_elem(&queue, &v, BPF_NOEXIST));
    put(&i, bpf_map_peek_elem(&queue, &got));
    put(&i, got);
    for (int n = 0; n < 4; n++) {
        got = 0;
        put(&i, bpf_map_pop_elem(&queue, &got));
        put(&i, got);
    }
    for (v = 1; v <= 4; v++)
        put(&i, bpf_map_push_elem(&stack, &v, BPF_ANY));
    v = 6;
    put(&i, bpf_map_push_elem(&stack, &v, BPF_EXIST));
    for (int n = 0; n < 4; n++) {
        got = 0;
        put(&i, bpf_map_pop_elem(&stack, &got));
        put(&i, got);
    }
    return i;
}

SEC("raw_tp/sys_enter")
int bloom_filter(void *ctx)
{
    __u32 i = 0, v = 5;
    put(&i, bpf_map_push_elem(&bloom, &v, BPF_ANY));
    put(&i, bpf_map_peek_elem(&bloom, &v));
    v = 6;
    put(&i, bpf_map_peek_elem(&bloom, &v));
    put(&i, bpf_map_push_elem(&bloom, &v, BPF_EXIST));
    put(&i, bpf_map_peek_elem(&bloom, &v));
    return i;
}

SEC("raw_tp/sys_enter")
int ring_buffer(void *ctx)
{
    __u32 i = 0;
    __u64 data = 42;
    void *too_big = bpf_ringbuf_reserve(&ring, 8192, 0);
    put(&i, too_big != 0);
    if (too_big)
        bpf_ringbuf_discard(too_big, 0);
    __u64 *e = bpf_ringbuf_reserve(&ring, 8, 0);
    put(&i, e != 0);
    if (e) {
        *e = 1;
        bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    }
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA));
    put(&i, bpf_ringbuf_output(&ring, &data, 8, 0));
    put(&i, bpf_ringbuf_output(&ring, &data, 12, BPF_RB_FORCE_WAKEUP));
    put(&i, bpf_ringbuf_output(&ring, &data, 8, 4));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_RING_SIZE));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_CONS_POS));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_PROD_POS));
    put(&i, bpf_ringbuf_query(&ring, 99));
    e = bpf_ringbuf_reserve(&ring, 16, 0);
    if (e)
        bpf_ringbuf_discard(e, 0);
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA));
    void *none = bpf_ringbuf_reserve(&ring, 0, 0);
    put(&i, none != 0);
    if (none)
        bpf_ringbuf_submit(none, 0);
    void *flagged = bpf_ringbuf_reserve(&ring, 8, 1);
    put(&i, flagged != 0);
    if (flagged)
        bpf_ringbuf_submit(flagged, 0);
    put(&i, bpf_ringbuf_output(&ring, &data, 0, 0));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA));
    put(&i, bpf_ringbuf_query(&ring, BPF_RB_PROD_POS));
    return i;
}

static __always_inline struct lpm_key ip(__u32 prefixlen, __u8 a, __u8 b, __u8 c, __u8 d)
{
    struct lpm_key k = { .prefixlen = prefixlen, .addr = { a, b, c, d } };
    return k;
}

SEC("raw_tp/sys_enter")
int longest_prefix(void *ctx)
{
    __u32 i = 0;
    __u64 v;
    struct lpm_key k;
    k = ip(8, 10, 0, 0, 0);
    v = 8;
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_ANY));
    k = ip(16, 10, 1, 0, 0);
    v = 16;
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_NOEXIST));
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_NOEXIST));
    k = ip(32, 10, 1, 2, 3);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(32, 10, 2, 2, 3);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(32, 11, 1, 2, 3);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(33, 10, 1, 2, 3);
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_ANY));
    k = ip(16, 10, 1, 0, 0);
    put(&i, bpf_map_delete_elem(&lpm, &k));
    put(&i, bpf_map_delete_elem(&lpm, &k));
    k = ip(32, 10, 1, 2, 3);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    /* A default route; a lookup with a shorter prefix than the entries; prefixes that are not
     * there. */
    k = ip(0, 0, 0, 0, 0);
    v = 0;
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_NOEXIST));
    k = ip(32, 192, 168, 0, 1);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(4, 10, 1, 2, 3);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(9, 10, 0, 0, 0);
    put(&i, bpf_map_delete_elem(&lpm, &k));
    k = ip(8, 10, 0, 0, 0);
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_EXIST));
    k = ip(24, 10, 9, 9, 0);
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_EXIST));
    k = ip(12, 10, 255, 0, 0);
    v = 12;
    put(&i, bpf_map_update_elem(&lpm, &k, &v, BPF_ANY));
    k = ip(32, 10, 15, 1, 1);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    k = ip(32, 10, 16, 1, 1);
    put(&i, found(bpf_map_lookup_elem(&lpm, &k)));
    return i;
}

/* Tail-calls itself (the test puts it in chain[0]) until the chain's limit, then an empty slot. */
SEC("raw_tp/sys_enter")
int tail_chain(void *ctx)
{
    __u32 i = 0, k = 0;
    __u64 *runs = bpf_map_lookup_elem(&chain_runs, &k);
    if (!runs)
        return 0;
    *runs += 1;
    bpf_tail_call(ctx, &chain, 0);
    put(&i, *runs);
    bpf_tail_call(ctx, &chain, 1);
    put(&i, 7);
    bpf_tail_call(ctx, &chain, 2);
    put(&i, 8);
    return i;
}

char LICENSE[] SEC("license") = "GPL";
