// A target whose SIGALRM handler leaves by siglongjmp, as a timeout does: an interval timer
// fires every 500 us while the main thread calls add() in a loop, and each firing jumps back
// to the loop, wherever the thread was (inside add, or inside a probe's handlers on add).
// Usage: timeouts CALLS   (prints "calls C jumps J": the calls begun, the timer's jumps)
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

static sigjmp_buf loop;
static volatile long jumps;
volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = 0;
    for (long k = 0; k < 20; k++)
        s += (a ^ k) + b;
    last_sum = s;
    return s;
}

static void on_alarm(int sig)
{
    (void)sig;
    jumps++;
    siglongjmp(loop, 1);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    volatile long calls = 0;
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 500}, {0, 500}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, NULL);
    sigsetjmp(loop, 1);
    while (calls < n) {
        calls++;
        add(calls, 1);
    }
    setitimer(ITIMER_REAL, &off, NULL);
    printf("calls %ld jumps %ld\n", (long)calls, (long)jumps);
    return 0;
}
