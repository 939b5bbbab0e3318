// A target whose SIGALRM handler, every 100 us, leaves by siglongjmp wherever the main thread
// is, and first judges whether the call of add() it cut short had begun: add()'s first
// instruction had run (the handler found the thread inside add() past that instruction, or
// outside this executable's code: in the code a probe runs there, a kernel uprobe's or ours),
// or add() had stored its sequence number, its first instruction. Calls cut short before
// that are "missed": no entry probe sees them on the kernel (its int3 had not run).
// Usage: entries CALLS [wait]   (prints "calls C missed M jumps J"; with `wait` it first
// waits for a byte on stdin, so that probes can be attached to it)
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

extern const char __executable_start[], etext[];

static sigjmp_buf loop;
static volatile long calls, entered, judged, missed, jumps;
volatile long last_sum;

// Its first instruction stores `seq` (a 7-byte move: no landing needed for a jump over it).
__attribute__((noinline)) long add(long seq, long b)
{
    entered = seq;
    long s = 0;
    for (long k = 0; k < 20; k++)
        s += (seq ^ k) + b;
    last_sum = s;
    return s;
}

static void on_alarm(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)info;
    uintptr_t ip = (uintptr_t)((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RIP];
    long seq = calls;
    jumps++;
    // Each call judged once (a second jump before the loop's next call finds it judged).
    if (seq != judged) {
        judged = seq;
        int outside = ip < (uintptr_t)__executable_start || ip >= (uintptr_t)etext;
        int begun = ip != (uintptr_t)add && (outside || entered == seq);
        if (!begun)
            missed++;
    }
    siglongjmp(loop, 1);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_alarm;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGALRM, &sa, NULL);
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 1;
    }
    struct itimerval every = {{0, 100}, {0, 100}}, off = {{0, 0}, {0, 0}};
    static volatile int armed;
    sigsetjmp(loop, 1);
    // Armed once the jump has somewhere to go.
    if (!armed) {
        armed = 1;
        setitimer(ITIMER_REAL, &every, NULL);
    }
    while (calls < n) {
        calls++;
        add(calls, 1);
    }
    setitimer(ITIMER_REAL, &off, NULL);
    printf("calls %ld missed %ld jumps %ld\n", (long)calls, (long)missed, (long)jumps);
    return 0;
}
