// A target that a timer signal interrupts every 200 us for SECONDS seconds while it loops on
// system calls (nanosleep, a pipe's write and read), with a handler that makes a call of its
// own (getppid): signals land in its calls, between them, and in code of the agent's.
// Usage: signal_storm SECONDS   (prints "handled N": each handler's getppid and rt_sigreturn
// are one call each)
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile long handled;

static void on_alarm(int sig)
{
    (void)sig;
    handled++;
    (void)getppid();
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    int p[2];
    if (pipe(p) != 0)
        return 1;
    struct itimerval every = { { 0, 200 }, { 0, 200 } }, off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &every, NULL);
    // A monotonic clock, to the nanosecond: time(NULL) + 1 ends at the next second's turn,
    // which may be a few milliseconds away.
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += seconds;
    char c;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec >= end.tv_nsec))
            break;
        struct timespec t = { 0, 50000 };
        nanosleep(&t, NULL);
        if (write(p[1], "y", 1) != 1 || read(p[0], &c, 1) != 1)
            return 1;
    }
    setitimer(ITIMER_REAL, &off, NULL);
    // Every handler has returned: the count is final.
    printf("handled %ld\n", handled);
    return 0;
}
