// bpf_get_prandom_u32 on every engine: two draws differ and fit in 32 bits (r0 = 1), and a
// draw's low bit sampled 1,000 times is neither always 0 nor always 1. And the host process's
// identity on every engine (`identity`): uid, gid and name folded into r0.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("gpu/random")
int random_draws(void *ctx)
{
    __u64 a = bpf_get_prandom_u32(), b = bpf_get_prandom_u32();
    if (a == b || (a >> 32) || (b >> 32))
        return 0;
    __u32 ones = 0;
    for (int i = 0; i < 1000; i++)
        ones += bpf_get_prandom_u32() & 1;
    return ones > 0 && ones < 1000;
}

SEC("gpu/identity")
int identity(void *ctx)
{
    char comm[16];
    if (bpf_get_current_comm(comm, sizeof(comm)))
        return 0;
    __u64 h = bpf_get_current_uid_gid();
    for (int i = 0; i < 16; i++)
        h = h * 31 + comm[i];
    return (int)(h ^ (h >> 32));
}

char LICENSE[] SEC("license") = "GPL";
