// Maps written by a CPU program and a GPU program, as bpftime's kernel-shared-map examples
// do: a uprobe on the app's launch_marker(launch) runs before every launch, the vector add's
// entry probe in every GPU thread. Everything both write reaches the host's maps:
// - `counts` (array): [1] launches counted by the CPU, [0] threads counted by the GPU;
// - `per_cpu` (per-CPU array): launches + threads, summed over CPUs (the GPU's per-SM
//   values are added to the CPU's);
// - `seen` (hash): key 1000 + launch from the CPU, key = block from the GPU (threads of the
//   block, over all launches);
// - `events` (ring buffer): a record per launch from the CPU, one per block from the GPU.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16384);
} events SEC(".maps");

/// A ring record: who wrote it (1 CPU, 2 GPU) and the launch or block.
struct event {
    __u32 source;
    __u32 id;
};

static __always_inline void add(void *map, __u32 key)
{
    __u64 *n = bpf_map_lookup_elem(map, &key);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("uprobe//proc/self/exe:launch_marker")
int BPF_KPROBE(count_launch, int launch)
{
    add(&counts, 1);
    __u32 zero = 0;
    __u64 *c = bpf_map_lookup_elem(&per_cpu, &zero);
    if (c)
        *c += 1;
    __u32 key = 1000 + launch;
    __u64 one = 1;
    bpf_map_update_elem(&seen, &key, &one, BPF_ANY);
    struct event e = { .source = 1, .id = launch };
    bpf_ringbuf_output(&events, &e, sizeof(e), 0);
    return 0;
}

/// The vector add's context: 4 parameters, then tid, ctaid, ntid, nctaid (x, y, z).
struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

SEC("kprobe/vector_add")
int count_thread(struct vector_add_ctx *ctx)
{
    add(&counts, 0);
    __u32 zero = 0;
    __u64 *c = bpf_map_lookup_elem(&per_cpu, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    __u32 block = ctx->ctaid[0];
    __u64 zero64 = 0;
    bpf_map_update_elem(&seen, &block, &zero64, BPF_NOEXIST);
    add(&seen, block);
    if (ctx->tid[0] == 0) {
        struct event e = { .source = 2, .id = block };
        bpf_ringbuf_output(&events, &e, sizeof(e), 0);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
