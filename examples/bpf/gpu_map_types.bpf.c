// bpftime's GPU map type ids (1501 GPU hash, 1502 per-GPU-thread array, 1503 GPU array, 1512
// and 1513 the per-thread and shared arrays bpftime keeps in host memory, 1527 GPU ring
// buffer), as bpftime's GPU examples declare them: they load on the CPU side (as HASH, ARRAY
// with every thread's value in one, ARRAY, ARRAY with every thread's value, ARRAY, RINGBUF) and
// live in device memory on the GPU.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, 1503);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} gpu_array SEC(".maps");

struct {
    __uint(type, 1501);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} gpu_hash SEC(".maps");

struct {
    __uint(type, 1513);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} host_array SEC(".maps");

struct {
    __uint(type, 1512);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} host_per_thread SEC(".maps");

struct {
    __uint(type, 1502);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} per_thread SEC(".maps");

struct {
    __uint(type, 1527);
    __uint(max_entries, 4096);
} gpu_ring SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} perf SEC(".maps");

SEC("gpu/types")
int types(__u64 *ctx)
{
    __u32 k = 1;
    __u64 *v = bpf_map_lookup_elem(&gpu_array, &k);
    if (v)
        __sync_fetch_and_add(v, 5);
    __u64 val = 42;
    bpf_map_update_elem(&gpu_hash, &k, &val, BPF_ANY);
    bpf_ringbuf_output(&gpu_ring, &val, sizeof(val), 0);
    bpf_perf_event_output(ctx, &perf, BPF_F_CURRENT_CPU, &val, sizeof(val));
    __u32 last = 7;
    bpf_map_update_elem(&host_array, &last, &val, BPF_ANY);
    __u64 *own = bpf_map_lookup_elem(&host_per_thread, &k);
    if (own)
        *own += 9;
    // Thread 0's value (the CPU's lookup sees the first thread's part).
    __u64 *mine = bpf_map_lookup_elem(&per_thread, &k);
    if (mine)
        *mine += 7;
    return 3;
}

char LICENSE[] SEC("license") = "GPL";
