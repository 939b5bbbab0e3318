// A target for probes across fork: one thread calls add() ITERS times while the main thread
// forks CHILDREN children, each of which calls add() once and exits. A child forked while the
// other thread is inside a probe must not hang, and keeps the probes.
// Usage: forks ITERS CHILDREN   (prints the parent's sum; exits 1 if a child failed or hung)
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

static long iters;

static void *worker(void *arg)
{
    long sum = 0;
    for (long i = 0; i < iters; i++)
        sum += add(i, 1);
    *(long *)arg = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    iters = argc > 1 ? atol(argv[1]) : 100000;
    int children = argc > 2 ? atoi(argv[2]) : 50;
    long sum = 0;
    pthread_t t;
    pthread_create(&t, NULL, worker, &sum);
    int failed = 0;
    for (int c = 0; c < children; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10); // a hung child dies instead of hanging the test
            _exit(add(c, 0) == c ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }
    pthread_join(t, NULL);
    printf("sum %ld, %d of %d children failed\n", sum, failed, children);
    return failed != 0;
}
