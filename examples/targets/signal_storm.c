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
    time_t end = time(NULL) + seconds;
    char c;
    while (time(NULL) < end) {
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
