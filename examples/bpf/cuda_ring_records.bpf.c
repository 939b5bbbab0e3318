// A GPU ring buffer declared bpftime's way (map type 1527 with a key, a record-sized value and
// a record count per GPU thread) and written with bpf_perf_event_output, as bpftime's GPU
// examples do: when the first thread of each block of the vector add returns, one record with
// the block and the GPU's clock (and the same record into a perf event array). A loader reads them with bpftime's
// bpftime_syscall_server__poll_gpu_ringbuf_map (examples/loaders/gpu_ring_poll.c).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct record {
    __u32 block;
    __u32 threads;
    __u64 ns;
};

struct {
    __uint(type, 1527);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, struct record);
} records SEC(".maps");

/// The same records through a perf event array (the record of the SM's "CPU").
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} perf_records SEC(".maps");

struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

SEC("kretprobe/vector_add")
int block_returned(struct vector_add_ctx *ctx)
{
    if (ctx->tid[0] != 0)
        return 0;
    struct record r = { .block = ctx->ctaid[0], .threads = ctx->ntid[0], .ns = bpf_ktime_get_ns() };
    bpf_perf_event_output(ctx, &records, 0, &r, sizeof(r));
    bpf_perf_event_output(ctx, &perf_records, BPF_F_CURRENT_CPU, &r, sizeof(r));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
