// A target whose threads are running or waiting when system call programs are attached to it:
// THREADS threads spin without making a call, one waits in epoll_wait with no timeout on a pipe
// until the end, and the main thread calls getppid and polls standard input for 5 ms, until
// standard input ends. It receives no signal and installs no handler: it makes no
// `rt_sigreturn`, and none of its calls ends with EINTR (on the kernel, attached or not).
// Usage: busy_threads THREADS   (prints "ready" once its threads run, then "calls N
// interrupted I": I, the calls that ended with EINTR)
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

static volatile int stop;
static volatile long spins, interrupted;
static int wake[2];

static void *spin(void *arg)
{
    while (!stop)
        spins++;
    return arg;
}

static void *wait_for_end(void *arg)
{
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN }, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, wake[0], &ev);
    int n;
    while ((n = epoll_wait(ep, &got, 1, -1)) < 0)
        if (errno == EINTR)
            interrupted++;
    return arg;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 3;
    pthread_t t[16], waiter;
    if (n > 16)
        n = 16;
    if (pipe(wake) != 0)
        return 1;
    for (int i = 0; i < n; i++)
        pthread_create(&t[i], NULL, spin, NULL);
    pthread_create(&waiter, NULL, wait_for_end, NULL);
    printf("ready\n");
    fflush(stdout);
    long calls = 0;
    struct pollfd in = { .fd = 0, .events = POLLIN };
    // Until standard input is readable (its end, or a byte).
    for (;;) {
        (void)getppid();
        calls++;
        int r = poll(&in, 1, 5);
        if (r > 0)
            break;
        if (r < 0 && errno == EINTR)
            interrupted++;
    }
    stop = 1;
    if (write(wake[1], "x", 1) != 1)
        return 1;
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    pthread_join(waiter, NULL);
    printf("calls %ld interrupted %ld\n", calls, interrupted);
    return 0;
}
