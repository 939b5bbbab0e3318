// Programs that run on the GPU as kernels of their own (bpftime's `kprobe/__directly_run`,
// started with `bpftime prog run NAME --grid X,Y,Z --block X,Y,Z`): each thread finds its
// place from bpftime's block and thread id helpers and writes its part of a map, reading a
// scale from global data that the host set.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static const __u64 (*block_idx)(__u64 *x, __u64 *y, __u64 *z) = (void *)503;
static const __u64 (*block_dim)(__u64 *x, __u64 *y, __u64 *z) = (void *)504;
static const __u64 (*thread_idx)(__u64 *x, __u64 *y, __u64 *z) = (void *)505;
static const __u64 (*grid_dim)(__u64 *x, __u64 *y, __u64 *z) = (void *)508;

volatile __u32 scale = 3;

struct {
    __uint(type, 1503);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u32);
} out SEC(".maps");

// out[i] = i * scale for every thread i of a one-dimensional launch.
SEC("kprobe/__directly_run")
int fill(void *ctx)
{
    __u64 bx, by, bz, dx, dy, dz, tx, ty, tz;
    block_idx(&bx, &by, &bz);
    block_dim(&dx, &dy, &dz);
    thread_idx(&tx, &ty, &tz);
    __u32 i = bx * dx + tx;
    __u32 v = i * scale;
    bpf_map_update_elem(&out, &i, &v, BPF_ANY);
    return 0;
}

// out[y * width + x] = 1000 * y + x over a two-dimensional launch.
SEC("kprobe/__directly_run")
int fill_2d(void *ctx)
{
    __u64 bx, by, bz, dx, dy, dz, tx, ty, tz, gx, gy, gz;
    block_idx(&bx, &by, &bz);
    block_dim(&dx, &dy, &dz);
    thread_idx(&tx, &ty, &tz);
    grid_dim(&gx, &gy, &gz);
    __u32 x = bx * dx + tx, y = by * dy + ty, width = gx * dx;
    __u32 i = y * width + x;
    __u32 v = 1000 * y + x;
    bpf_map_update_elem(&out, &i, &v, BPF_ANY);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
