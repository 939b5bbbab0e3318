// A target that burns CPU time: THREADS threads (1 by default) each spin in burn() until MS
// milliseconds of their own CPU time have run, for CPU-time sampling (`profile` probes).
// With `signals`, it also handles SIGRTMAX-7 itself (the signal bpftime samples with) and
// raises it 5 times: it fails (exit 3) unless its handler saw all 5.
// Usage: spin MS [THREADS [signals]]   (prints "spun MS ms in T threads")
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

static long ms;
static volatile int handled;

static void on_own_signal(int sig)
{
    (void)sig;
    handled++;
}

static double thread_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

__attribute__((noinline)) void burn(long budget)
{
    volatile unsigned long x = 0;
    double end = thread_ms() + budget;
    while (thread_ms() < end)
        for (int i = 0; i < 1000; i++)
            x += i;
}

static void *run(void *arg)
{
    (void)arg;
    burn(ms);
    return NULL;
}

int main(int argc, char **argv)
{
    ms = argc > 1 ? atol(argv[1]) : 1000;
    int n = argc > 2 ? atoi(argv[2]) : 1;
    pthread_t t[64];
    int signals = argc > 3 && strcmp(argv[3], "signals") == 0;
    if (n < 1 || n > 64)
        return 1;
    if (signals)
        signal(SIGRTMAX - 7, on_own_signal);
    for (int i = 1; i < n; i++)
        pthread_create(&t[i], NULL, run, NULL);
    run(NULL);
    for (int i = 1; i < n; i++)
        pthread_join(t[i], NULL);
    printf("spun %ld ms in %d threads\n", ms, n);
    if (signals) {
        for (int i = 0; i < 5; i++)
            raise(SIGRTMAX - 7);
        if (handled != 5)
            return 3;
    }
    return 0;
}
