// A leaf function as `gcc -O2` builds it into a shared library: integer code only, so probes
// on it keep few vector registers (the benchmark's "C library leaf" rows).
__attribute__((noinline)) long bench_leaf(long a, long b)
{
    __asm__ volatile("" ::: "memory");
    return a * 3 ^ b;
}
