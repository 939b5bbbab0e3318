// A map-free program for `bpftime vm run` whose loop the verifier cannot prove in bounds (the
// kernel would refuse it: nothing relates `in->n` to the input's length), but whose walk is
// known when the loop starts: the JIT checks its whole range once per entry (a "walked loop",
// `bpftime vm disasm --proofs` says so) and faults where the interpreter does when it does not
// fit. Build: clang-14 -target bpf -mcpu=v3 -O2 -g -c vm_walk.bpf.c
//
// Input (r1): struct input below. Result (r0): the sum of values[i] * (i + 1) for i < n.

typedef unsigned long long u64;
typedef unsigned int u32;

struct input {
    u64 n;
    u32 values[];
};

__attribute__((section("vm"), used)) u64 weighted_sum(struct input *in)
{
    u64 sum = 0;
    for (u64 i = 0; i < in->n; i++)
        sum += (u64)in->values[i] * (i + 1);
    return sum;
}
