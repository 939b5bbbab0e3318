// Map values incremented the way C programs increment them, every form the GPU makes one
// atomic add of (see `FunctionWriter::increment` in gpu-ptx): 64- and 32-bit, by a constant or
// by a register, the sum read after or not, the old value kept, and one value at an address
// that is not aligned (the GPU takes the plain path there). The context's first u64 is `n`;
// the old value and a sum the program read back go to entry 0. The CPU and the GPU must leave
// the same values.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct counters {
    __u64 a;
    __u32 b;
    __u32 c;
    __u64 d;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, struct counters);
} vals SEC(".maps");

SEC("gpu/increments")
__u64 increments(__u64 *ctx)
{
    __u64 n = ctx[0];
    __u32 k = 0;
    struct counters *out = bpf_map_lookup_elem(&vals, &k);
    k = 1;
    struct counters *c = bpf_map_lookup_elem(&vals, &k);
    if (!c || !out)
        return 0;
    c->a += 1;
    c->b += 5;
    c->c += (__u32)n;
    __u64 old = c->d;
    c->d = old + n;
    __u64 t = c->a + 3;
    c->a = t;
    // Bytes 12..20 of the value (c's and half of d's) as one u64: not 8-aligned. (The
    // barriers keep the compiler from interleaving its load and store with the others.)
    asm volatile("" ::: "memory");
    __u64 *odd = (__u64 *)((char *)c + 12);
    *odd += n;
    asm volatile("" ::: "memory");
    out->a = old;
    out->d = t;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
