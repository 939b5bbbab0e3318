// A caller that keeps values in vector registers across a call to a leaf function of its own
// module, as a caller built with GCC's -fipa-ra may (the leaf touches none): probes on the
// leaf must keep them, and may keep fewer registers than the CPU has (only those this
// program's code names, and the ABI's argument and result registers).
//   leaf(a, b)            = 3a + b, integer code only
//   keep_call(a, b, buf)  = leaf(a, b), with buf[0..2] in xmm3 and buf[2..4] in xmm12 across
//                           the call, written back afterwards
// Usage: vectors ITERS   (prints "sum S kept K": K counts calls whose xmm3/xmm12 survived)
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) long leaf(long a, long b)
{
    __asm__ volatile("" ::: "memory");
    return 3 * a + b;
}

long keep_call(long a, long b, double *buf);
__asm__(".text\n"
        ".globl keep_call\n.type keep_call, @function\nkeep_call:\n"
        "\tmovupd (%rdx), %xmm3\n"
        "\tmovupd 16(%rdx), %xmm12\n"
        "\tpush %rdx\n"
        "\tcall leaf\n"
        "\tpop %rdx\n"
        "\tmovupd %xmm3, (%rdx)\n"
        "\tmovupd %xmm12, 16(%rdx)\n"
        "\tret\n"
        ".size keep_call, . - keep_call\n");

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    long sum = 0, kept = 0;
    for (long i = 0; i < iters; i++) {
        double want[4] = {i * 0.5, -1.0 * i, i + 0.25, 1e9 - i};
        double buf[4] = {want[0], want[1], want[2], want[3]};
        sum += keep_call(i, 2, buf);
        kept += buf[0] == want[0] && buf[1] == want[1] && buf[2] == want[2] && buf[3] == want[3];
    }
    printf("sum %ld kept %ld\n", sum, kept);
    return 0;
}
