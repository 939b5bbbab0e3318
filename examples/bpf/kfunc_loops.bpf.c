// Open-coded loops over kfuncs, as libbpf's bpf_for() writes them (bpf_iter_num_new, _next,
// _destroy), inside an RCU read section, on the `calls` target's add(a, b), in count_calls's
// interface (results in `stats`). The system headers predate bpf_for(), so the iterator
// (iter_num.h) and the kfuncs are declared as the kernel's BTF has them.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "iter_num.h"

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

enum { CALLS, SUM_OF_RANGES, ITERATIONS, EMPTY_RANGE, BACKWARDS, TOO_BIG, FROM_INT_MIN };

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p += v;
}

SEC("uprobe/add")
int BPF_KPROBE(on_add, unsigned long a, long b)
{
    struct bpf_iter_num it;
    int *n;
    int end = a % 10;

    add_to(CALLS, 1);
    bpf_rcu_read_lock();
    // sum of 0..end-1 and the number of iterations
    bpf_iter_num_new(&it, 0, end);
    while ((n = bpf_iter_num_next(&it))) {
        add_to(SUM_OF_RANGES, *n);
        add_to(ITERATIONS, 1);
    }
    bpf_iter_num_destroy(&it);
    bpf_rcu_read_unlock();

    // [5, 5) gives nothing; start > end fails with -EINVAL; more than BPF_MAX_LOOPS numbers
    // with -E2BIG; neither gives a number.
    bpf_iter_num_new(&it, 5, 5);
    while ((n = bpf_iter_num_next(&it)))
        add_to(EMPTY_RANGE, 1);
    bpf_iter_num_destroy(&it);
    int err = bpf_iter_num_new(&it, 7, 3);
    if (err == -22 && !bpf_iter_num_next(&it))
        add_to(BACKWARDS, 1);
    bpf_iter_num_destroy(&it);
    err = bpf_iter_num_new(&it, 0, (1 << 23) + 1);
    if (err == -7 && !bpf_iter_num_next(&it))
        add_to(TOO_BIG, 1);
    bpf_iter_num_destroy(&it);
    // The first number of a range starting at INT_MIN (the kernel steps in 32 bits).
    bpf_iter_num_new(&it, -2147483647 - 1, -2147483647 + 2);
    while ((n = bpf_iter_num_next(&it)))
        add_to(FROM_INT_MIN, 1);
    bpf_iter_num_destroy(&it);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
