// A shared library loaded with dlopen by dlopen_host.c, for probes on late-loaded code: a
// function and a USDT probe (plugin:mul, its two arguments) in it. Its constructor calls the
// function once, with (0, 0), while dlopen loads it.
#include <sys/sdt.h>

__attribute__((noinline)) int plugin_mul(int a, int b)
{
    DTRACE_PROBE2(plugin, mul, a, b);
    __asm__ volatile("" ::: "memory");
    return a * b;
}

__attribute__((constructor)) static void plugin_start(void)
{
    plugin_mul(0, 0);
}
