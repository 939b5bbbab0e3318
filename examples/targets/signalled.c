// A target for bpf_send_signal: counts the SIGUSR1 and SIGUSR2 it receives while calling
// add(i, i) ITERS times, and prints "usr1 N usr2 M".
// Usage: signalled ITERS
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t usr1, usr2;
static volatile long last;

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
}

__attribute__((noinline)) long add(long a, long b)
{
    last = a + b;
    return a + b;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10;
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    for (long i = 0; i < iters; i++)
        add(i, i);
    printf("usr1 %d usr2 %d\n", (int)usr1, (int)usr2);
    return 0;
}
