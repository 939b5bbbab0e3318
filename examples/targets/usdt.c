// A target with USDT probes (systemtap's sys/sdt.h, as applications ship them):
// bpftime:tick(i, 2 * i) fires N times; bpftime:guarded(i, 2 * i) too, but only while a tracer
// has raised its semaphore (the way applications skip costly probe arguments).
// Usage: usdt N [wait]   (with `wait`, reads one byte from stdin first)
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#include <unistd.h>

// With semaphores on, every probe has one; tick fires whether or not its semaphore is raised.
unsigned short bpftime_tick_semaphore __attribute__((unused)) __attribute__((section(".probes")));
unsigned short bpftime_guarded_semaphore __attribute__((unused)) __attribute__((section(".probes")));

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    long sum = 0;
    for (long i = 0; i < n; i++) {
        DTRACE_PROBE2(bpftime, tick, i, 2 * i);
        if (bpftime_guarded_semaphore)
            DTRACE_PROBE2(bpftime, guarded, i, 2 * i);
        sum += i;
    }
    printf("%ld ticks, sum %ld\n", n, sum);
    return 0;
}
