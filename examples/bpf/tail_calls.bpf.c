// Tail calls through a prog array initialised statically in BTF (`.values`), and
// bpf_loop with a callback. `dispatch` jumps to `stage[in->op]`; each stage adds to a counter.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct input {
    __u32 op;
    __u32 n;
    __u64 out;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

static __always_inline void hit(__u32 i)
{
    __u64 *v = bpf_map_lookup_elem(&hits, &i);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static long add_index(__u64 index, void *ctx)
{
    struct input *in = ctx;
    in->out += index;
    return 0;
}

SEC("uprobe/stage0")
int stage0(struct input *in)
{
    hit(0);
    return 100;
}

SEC("uprobe/stage1")
int stage1(struct input *in)
{
    hit(1);
    // Sum 0..n-1 into in->out with a callback.
    long iterations = bpf_loop(in->n, add_index, in, 0);
    return 200 + iterations;
}

struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __array(values, int (void *));
} stages SEC(".maps") = {
    .values = {
        [0] = (void *)&stage0,
        [1] = (void *)&stage1,
    },
};

SEC("uprobe/dispatch")
int dispatch(struct input *in)
{
    hit(3);
    bpf_tail_call(in, &stages, in->op);
    // Only reached when there is no program at in->op.
    return -1;
}

char LICENSE[] SEC("license") = "GPL";
