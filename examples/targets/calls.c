// A target for uprobe tests: calls add(i, 2*i) ITERS times on THREADS threads, then prints
// the sum of the results (so a wrong return value under a probe would show).
// Usage: calls ITERS [THREADS [wait|sleep]]   (with `wait`, reads one byte from stdin first, so
// that a loader can attach to the running process; with `sleep`, each thread first sleeps 3 s
// in one nanosleep(2), and the program also prints how many of those sleeps ended early: a
// signal sent to attach a probe must not cut an application's sleep short)
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

// Too short for a 5-byte jump (`xor eax, eax; ret`): probes on it use the padding after it.
__attribute__((noinline)) int tiny(void)
{
    __asm__ volatile("" ::: "memory");
    return 0;
}

// Recursion, for return probes: fact(n) calls fact(n - 1).
__attribute__((noinline)) long fact(long n)
{
    if (n <= 1)
        return 1;
    long r = fact(n - 1);
    last_sum = r; // keeps the compiler from turning the recursion into a loop
    return n * r;
}

static long iters;
static int sleep_first;
static volatile int woken_early;

static void *worker(void *arg)
{
    long sum = 0;
    if (sleep_first) {
        struct timespec t = {3, 0};
        if (nanosleep(&t, &t) != 0)
            __atomic_fetch_add(&woken_early, 1, __ATOMIC_RELAXED);
    }
    for (long i = 0; i < iters; i++)
        sum += add(i, 2 * i);
    *(long *)arg = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    iters = argc > 1 ? atol(argv[1]) : 10;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    pthread_t t[64];
    long sums[64] = {0};
    if (threads > 64)
        threads = 64;
    if (argc > 3 && strcmp(argv[3], "wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    sleep_first = argc > 3 && strcmp(argv[3], "sleep") == 0;
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, &sums[i]);
    long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        total += sums[i];
    }
    printf("sum %ld fact %ld tiny %d\n", total, fact(10), tiny());
    if (sleep_first)
        printf("sleeps cut short: %d\n", woken_early);
    return 0;
}
