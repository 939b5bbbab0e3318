// A leaf function called with vector state the probes must hand back as it was (built with
// `cc -O2`, whose own code uses no AVX; the calls below are written in assembly):
//   leaf(a, b)              = 3a + b, integer code only
//   ymm_call(a, b, in, out) = leaf(a, b), with in[0..4] in ymm0 across the call (its upper
//                             half not zero), written to out afterwards
//   clean_call(a, b, &r)    = r = leaf(a, b); returns XINUSE's AVX and AVX-512 upper-half
//                             bits (xgetbv 1, mask 0x44) after vzeroupper and the call: 0 when
//                             the call left the upper halves as clean as it found them
// Usage: upper_halves ITERS   (prints "sum S upper U clean C": S sums every leaf result, U
// counts calls whose ymm0 survived, C calls that left the upper halves clean; or "no AVX with
// XINUSE" where the CPU has no AVX or does not report XINUSE)
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) long leaf(long a, long b)
{
    __asm__ volatile("" ::: "memory");
    return 3 * a + b;
}

long ymm_call(long a, long b, const double *in, double *out);
__asm__(".text\n"
        ".globl ymm_call\n.type ymm_call, @function\nymm_call:\n"
        "\tvmovupd (%rdx), %ymm0\n"
        "\tpush %rcx\n"
        "\tcall leaf\n"
        "\tpop %rcx\n"
        "\tvmovupd %ymm0, (%rcx)\n"
        "\tvzeroupper\n"
        "\tret\n"
        ".size ymm_call, . - ymm_call\n");

unsigned long clean_call(long a, long b, long *result);
__asm__(".text\n"
        ".globl clean_call\n.type clean_call, @function\nclean_call:\n"
        "\tpush %rdx\n"
        "\tvzeroupper\n"
        "\tcall leaf\n"
        "\tpop %rdx\n"
        "\tmov %rax, (%rdx)\n"
        "\tmov $1, %ecx\n"
        "\txgetbv\n"
        "\tand $0x44, %eax\n"
        "\tret\n"
        ".size clean_call, . - clean_call\n");

/* XINUSE after vzeroupper and the 128-bit VEX instructions a stub runs on its way out (or-ing
 * into xmm15, vptest, a load of xmm0), with no call: 0 where the CPU reports the upper halves
 * clean after them, which clean_call needs (the SDM lets a CPU report a component in use when
 * it is not). */
unsigned long clean_now(void);
__asm__(".text\n"
        ".globl clean_now\n.type clean_now, @function\nclean_now:\n"
        "\tvzeroupper\n"
        "\tsub $16, %rsp\n"
        "\tmovq $0, (%rsp)\n"
        "\tmovq $0, 8(%rsp)\n"
        "\tvpxor %xmm15, %xmm15, %xmm15\n"
        "\tvpor (%rsp), %xmm15, %xmm15\n"
        "\tvptest %xmm15, %xmm15\n"
        "\tvmovdqu (%rsp), %xmm0\n"
        "\tadd $16, %rsp\n"
        "\tmov $1, %ecx\n"
        "\txgetbv\n"
        "\tand $0x44, %eax\n"
        "\tret\n"
        ".size clean_now, . - clean_now\n");

/* AVX usable (CPU and OS), and xgetbv with ecx = 1 (XINUSE) supported. */
static int avx_with_xinuse(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_AVX) || !(c & bit_OSXSAVE))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6 || __get_cpuid_max(0, 0) < 0xd)
        return 0;
    __cpuid_count(0xd, 1, a, b, c, d);
    return (a >> 2) & 1;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    long sum = 0, upper = 0, clean = 0;
    if (!avx_with_xinuse() || clean_now() != 0) {
        printf("no AVX with XINUSE\n");
        return 0;
    }
    for (long i = 0; i < iters; i++) {
        double in[4] = {i + 0.5, 2.0 * i, -3.0 - i, 7e6 + i}, out[4] = {0, 0, 0, 0};
        long r;
        sum += ymm_call(i, 1, in, out);
        upper += out[0] == in[0] && out[1] == in[1] && out[2] == in[2] && out[3] == in[3];
        clean += clean_call(i, 1, &r) == 0;
        sum += r;
    }
    printf("sum %ld upper %ld clean %ld\n", sum, upper, clean);
    return 0;
}
