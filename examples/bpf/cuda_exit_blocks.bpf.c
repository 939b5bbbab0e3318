// bpftime's bpf_cuda_exit (helper 507) in a kernel probe: the GPU thread ends there, and the
// kernel's body does not run for it (bpftime's atomizer example partitions a kernel's blocks
// this way). Here only the vector add's blocks 0 and 1 run; the exit probe counts the threads
// that reached the kernel's end.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static const __u64 (*bpf_cuda_exit)(void) = (void *)507;

struct vector_add_ctx {
    __u64 a, b, c, n;
    __u32 tid[3], ctaid[3], ntid[3], nctaid[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} threads SEC(".maps");

SEC("kprobe/vector_add")
int first_two_blocks(struct vector_add_ctx *ctx)
{
    __u32 k = 0;
    __u64 *entered = bpf_map_lookup_elem(&threads, &k);
    if (entered)
        __sync_fetch_and_add(entered, 1);
    if (ctx->ctaid[0] >= 2)
        bpf_cuda_exit();
    return 0;
}

SEC("kretprobe/vector_add")
int finished(struct vector_add_ctx *ctx)
{
    __u32 k = 1;
    __u64 *done = bpf_map_lookup_elem(&threads, &k);
    if (done)
        __sync_fetch_and_add(done, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
