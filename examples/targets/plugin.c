// A shared library loaded with dlopen by dlopen_host.c, for probes on late-loaded code.
__attribute__((noinline)) int plugin_mul(int a, int b)
{
    __asm__ volatile("" ::: "memory");
    return a * b;
}
