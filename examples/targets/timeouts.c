// A target whose SIGALRM handler leaves by siglongjmp, as a timeout does: an interval timer
// fires every 500 us while the main thread calls add() in a loop, and each firing jumps back
// to the loop, wherever the thread was (inside add, or inside a probe's handlers on add).
// With `read`, each of CALLS rounds instead arms a one-shot 10 ms timer and blocks in a read(2)
// of an empty pipe, which the timer's jump leaves (a timeout on a blocking call).
// With `wait`, the timer runs from the start and the process first waits for a byte on stdin
// (its read interrupted, and left by a jump, every 500 us), so that `bpftime attach` comes
// while the timer fires.
// Usage: timeouts CALLS [read|wait]   (prints "calls C jumps J": the calls or rounds begun,
// the timer's jumps)
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

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
    if (argc > 2 && strcmp(argv[2], "read") == 0) {
        int p[2];
        char c;
        if (pipe(p) != 0)
            return 1;
        sigsetjmp(loop, 1);
        while (calls < n) {
            calls++;
            // (10 ms: a round whose timer fired before its read began, under load, would count
            // a jump without a read.)
            struct itimerval once = {{0, 0}, {0, 10000}};
            setitimer(ITIMER_REAL, &once, NULL);
            if (read(p[0], &c, 1) >= 0)
                return 2;
        }
        printf("calls %ld jumps %ld\n", (long)calls, (long)jumps);
        return 0;
    }
    struct itimerval every = {{0, 500}, {0, 500}}, off = {{0, 0}, {0, 0}};
    static volatile int armed, started;
    sigsetjmp(loop, 1);
    // Armed only once the jump has somewhere to go: a first firing before sigsetjmp (a page
    // fault or a preemption of 500 us is enough) would jump through an empty buffer.
    if (!armed) {
        armed = 1;
        setitimer(ITIMER_REAL, &every, NULL);
    }
    if (!started && argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        while (read(0, &c, 1) < 0)
            ;
        started = 1;
    }
    while (calls < n) {
        calls++;
        add(calls, 1);
    }
    setitimer(ITIMER_REAL, &off, NULL);
    printf("calls %ld jumps %ld\n", (long)calls, (long)jumps);
    return 0;
}
