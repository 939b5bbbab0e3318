// Maps kept in host memory (bpftime's 1512 and 1513): the GPU reads and writes the region's
// values themselves, so the host sees the kernels' counts while they run and the kernels see a
// setting the moment the host changes it, with no copy either way. The vector add's entry
// probe counts threads in `live` (and in `copied`, an ordinary array the agent copies back,
// for contrast), adds the host's `settings[0]` to `live[1]`, and counts each thread's entries
// in its own slot of `per_thread`. `poke` writes 7 at a byte offset the context gives into
// `live`'s value 0: an offset past the map's storage is a fault, not a write to the host.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define BPF_MAP_TYPE_PERGPUTD_ARRAY_HOST_MAP 1512
#define BPF_MAP_TYPE_GPU_ARRAY_HOST_MAP 1513

struct {
    __uint(type, BPF_MAP_TYPE_GPU_ARRAY_HOST_MAP);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} live SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_GPU_ARRAY_HOST_MAP);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} settings SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERGPUTD_ARRAY_HOST_MAP);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} per_thread SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} copied SEC(".maps");

static __always_inline void add(void *map, __u32 k, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(map, &k);
    if (v)
        __sync_fetch_and_add(v, n);
}

SEC("kprobe/vector_add")
int count_in_host_memory(void *ctx)
{
    __u32 zero = 0;
    __u64 *factor = bpf_map_lookup_elem(&settings, &zero);
    add(&live, 0, 1);
    add(&live, 1, factor ? *factor : 0);
    add(&copied, 0, 1);
    __u64 *mine = bpf_map_lookup_elem(&per_thread, &zero);
    if (mine)
        *mine += 1;
    return 0;
}

struct poke_ctx {
    __u64 offset;
};

SEC("kprobe/poke")
int poke(struct poke_ctx *ctx)
{
    __u32 zero = 0;
    char *v = bpf_map_lookup_elem(&live, &zero);
    if (!v)
        return 1;
    *(__u64 *)(v + ctx->offset) = 7;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
