// A target for probes across exec: calls add() ITERS times, then (while DEPTH > 0) replaces
// itself with a fresh image of itself (execv of /proc/self/exe) with DEPTH - 1, while another
// thread is calling add() too. The old image's probes go with it; the new image is attached
// afresh by the agent, preloaded again through the inherited environment.
// Usage: execs ITERS DEPTH   (the last image prints "sum S" for its own calls)
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

static volatile int stop;

static void *busy(void *arg)
{
    (void)arg;
    while (!stop)
        add(0, 0);
    return NULL;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    int depth = argc > 2 ? atoi(argv[2]) : 2;
    long sum = 0;
    for (long i = 0; i < iters; i++)
        sum += add(i, 1);
    if (depth > 0) {
        // A thread inside probes when the image is replaced.
        pthread_t t;
        pthread_create(&t, NULL, busy, NULL);
        char next_iters[32], next_depth[32];
        snprintf(next_iters, sizeof next_iters, "%ld", iters);
        snprintf(next_depth, sizeof next_depth, "%d", depth - 1);
        char *args[] = {argv[0], next_iters, next_depth, NULL};
        execv("/proc/self/exe", args);
        perror("execv");
        return 1;
    }
    printf("sum %ld\n", sum);
    return 0;
}
