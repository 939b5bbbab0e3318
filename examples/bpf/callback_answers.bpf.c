// Helpers that call back into the program, and what else needs the object's BTF: bpf_loop,
// bpf_for_each_map_elem on array, hash, per-CPU and LRU maps, libbpf's bpf_for() numeric iterator,
// global subprograms, maps of maps (inner maps libbpf makes from BTF). Raw tracepoint programs that write their answers
// to `out`; examples/loaders/test_run_lines.c runs them through libbpf, in the kernel and under
// bpftime's syscall server (cli/tests/loaders.rs compares the lines).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "iter_num.h"

#define OUT_SLOTS 64

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, OUT_SLOTS); __type(key, __u32); __type(value, __s64); } out SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } numbers SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); __type(key, __u32); __type(value, __u64); } table SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, __u64); } per_cpu SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } per_cpu_table SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } recent SEC(".maps");

/* Maps of maps, their inner maps given by libbpf from BTF (`__array(values, ...)`). */
struct inner {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
};
struct inner first SEC(".maps"), second SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 3);
    __type(key, __u32);
    __array(values, struct inner);
} outer_array SEC(".maps") = { .values = { [0] = &first, [2] = &second } };
struct {
    __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
    __uint(max_entries, 4);
    __type(key, __u32);
    __array(values, struct inner);
} outer_hash SEC(".maps") = { .values = { [1] = &second } };

static __always_inline void put(__u32 *i, __s64 v)
{
    __u32 k = *i;
    __s64 *slot = bpf_map_lookup_elem(&out, &k);
    if (slot)
        *slot = v;
    *i = k + 1;
}

struct sum {
    __s64 total;
    __s64 calls;
    __s64 stop_at;
};

static long add_index(__u64 index, struct sum *s)
{
    s->total += index;
    s->calls++;
    return index == s->stop_at;
}

SEC("raw_tp/sys_enter")
int loops(void *ctx)
{
    __u32 i = 0;
    struct sum s = { .stop_at = -1 };
    put(&i, bpf_loop(10, add_index, &s, 0));
    put(&i, s.total);
    put(&i, s.calls);
    s = (struct sum){ .stop_at = 3 };
    put(&i, bpf_loop(10, add_index, &s, 0));
    put(&i, s.total);
    put(&i, bpf_loop(0, add_index, &s, 0));
    put(&i, bpf_loop(10, add_index, &s, 1));
    put(&i, bpf_loop(1 << 24, add_index, &s, 0));
    return i;
}

/* Sums the values (each incremented once seen) and stops after key `stop_at`. */
static long add_value(void *map, __u32 *key, __u64 *value, struct sum *s)
{
    s->total += *value;
    s->calls++;
    *value += 1;
    return *key == s->stop_at;
}

SEC("raw_tp/sys_enter")
int map_walks(void *ctx)
{
    __u32 i = 0;
#pragma clang loop unroll(full)
    for (__u32 n = 0; n < 8; n++) {
        __u32 key = n;
        __u64 v = 10 * n;
        bpf_map_update_elem(&numbers, &key, &v, BPF_ANY);
        if (n % 2)
            bpf_map_update_elem(&table, &key, &v, BPF_ANY);
    }
    struct sum s = { .stop_at = -1 };
    put(&i, bpf_for_each_map_elem(&numbers, add_value, &s, 0));
    put(&i, s.total);
    s = (struct sum){ .stop_at = 3 };
    put(&i, bpf_for_each_map_elem(&numbers, add_value, &s, 0));
    put(&i, s.total);
    s = (struct sum){ .stop_at = -1 };
    put(&i, bpf_for_each_map_elem(&table, add_value, &s, 0));
    put(&i, s.total);
    /* The hash walk wrote each value plus one: read back. */
    __u32 k = 5;
    __u64 *v = bpf_map_lookup_elem(&table, &k);
    put(&i, v ? *v : -1);
    s = (struct sum){ .stop_at = -1 };
    put(&i, bpf_for_each_map_elem(&per_cpu, add_value, &s, 0));
    put(&i, s.total);
    put(&i, bpf_for_each_map_elem(&numbers, add_value, &s, 2));
    return i;
}

SEC("raw_tp/sys_enter")
int more_walks(void *ctx)
{
    __u32 i = 0;
#pragma clang loop unroll(full)
    for (__u32 n = 1; n <= 3; n++) {
        __u32 key = n;
        __u64 v = 100 * n;
        bpf_map_update_elem(&per_cpu_table, &key, &v, BPF_ANY);
        bpf_map_update_elem(&recent, &key, &v, BPF_ANY);
    }
    struct sum s = { .stop_at = -1 };
    put(&i, bpf_for_each_map_elem(&per_cpu_table, add_value, &s, 0));
    put(&i, s.total);
    __u32 k = 2;
    __u64 *v = bpf_map_lookup_elem(&per_cpu_table, &k);
    put(&i, v ? *v : -1);
    s = (struct sum){ .stop_at = -1 };
    put(&i, bpf_for_each_map_elem(&recent, add_value, &s, 0));
    put(&i, s.total);
    v = bpf_map_lookup_elem(&recent, &k);
    put(&i, v ? *v : -1);
    return i;
}

SEC("raw_tp/sys_enter")
int iterators(void *ctx)
{
    __u32 i = 0;
    struct bpf_iter_num it;
    int *n;
    __s64 sum = 0, steps = 0;
    bpf_iter_num_new(&it, 2, 7);
    while ((n = bpf_iter_num_next(&it))) {
        sum += *n;
        steps++;
    }
    bpf_iter_num_destroy(&it);
    put(&i, sum);
    put(&i, steps);
    put(&i, bpf_iter_num_new(&it, 5, 2));
    put(&i, bpf_iter_num_next(&it) != 0);
    bpf_iter_num_destroy(&it);
    put(&i, bpf_iter_num_new(&it, 0, 1 << 30));
    bpf_iter_num_destroy(&it);
    return i;
}

/* Value `key` of the inner map at `index` of `outer`, plus one; -1: no inner map, -2: no value. */
static __always_inline __s64 bump(void *outer, __u32 index, __u32 key)
{
    void *in = bpf_map_lookup_elem(outer, &index);
    if (!in)
        return -1;
    __u64 *v = bpf_map_lookup_elem(in, &key);
    if (!v)
        return -2;
    *v += 1 + index;
    return *v;
}

SEC("raw_tp/sys_enter")
int maps_of_maps(void *ctx)
{
    __u32 i = 0;
    put(&i, bump(&outer_array, 0, 1));
    put(&i, bump(&outer_array, 1, 1));
    put(&i, bump(&outer_array, 2, 1));
    put(&i, bump(&outer_array, 2, 9));
    put(&i, bump(&outer_array, 7, 1));
    put(&i, bump(&outer_hash, 1, 1));
    put(&i, bump(&outer_hash, 0, 1));
    /* The same inner map seen through both outer maps. */
    __u32 k = 1;
    __u64 *v = bpf_map_lookup_elem(&second, &k);
    put(&i, v ? *v : -1);
    return i;
}

__noinline int scale(int x, int by)
{
    return x * by + 1;
}

SEC("raw_tp/sys_enter")
int global_functions(void *ctx)
{
    __u32 i = 0;
    put(&i, scale(6, 7));
    put(&i, scale(-3, 3));
    return i;
}

char LICENSE[] SEC("license") = "GPL";
