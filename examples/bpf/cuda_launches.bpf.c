// Launches per CUDA kernel of the examples in examples/cuda: each probe counts the kernel's
// entries by the first thread of the first block, so one per launch. A probe's context is the
// kernel's parameters, 8 bytes each, then tid, ctaid, ntid and nctaid (x, y, z; u32 each).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum { VECTOR_ADD, GEMM, PARTIAL_SUMS, FINAL_SUM, SCALE, INCREMENT, KERNELS };

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, KERNELS);
    __type(key, __u32);
    __type(value, __u64);
} launches SEC(".maps");

static __always_inline int count_launch(void *ctx, int nparams, __u32 kernel)
{
    __u32 *ids = (__u32 *)((char *)ctx + 8 * nparams);
    // tid.x, tid.y, tid.z, ctaid.x, ctaid.y, ctaid.z all zero: the first thread of the launch.
    if (ids[0] | ids[1] | ids[2] | ids[3] | ids[4] | ids[5])
        return 0;
    __u64 *v = bpf_map_lookup_elem(&launches, &kernel);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

SEC("kprobe/vector_add")
int vector_add_launch(void *ctx) { return count_launch(ctx, 4, VECTOR_ADD); }

SEC("kprobe/gemm")
int gemm_launch(void *ctx) { return count_launch(ctx, 4, GEMM); }

SEC("kprobe/partial_sums")
int partial_sums_launch(void *ctx) { return count_launch(ctx, 3, PARTIAL_SUMS); }

SEC("kprobe/final_sum")
int final_sum_launch(void *ctx) { return count_launch(ctx, 3, FINAL_SUM); }

SEC("kprobe/scale")
int scale_launch(void *ctx) { return count_launch(ctx, 3, SCALE); }

SEC("kprobe/increment")
int increment_launch(void *ctx) { return count_launch(ctx, 2, INCREMENT); }

char LICENSE[] SEC("license") = "GPL";
