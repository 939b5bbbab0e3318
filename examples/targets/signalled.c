// A target for bpf_send_signal: counts the SIGUSR1 and SIGUSR2 it receives while calling
// add(i, i) ITERS times, and prints "usr1 N usr2 M".
// Usage: signalled ITERS [onstack]
// With `onstack` both handlers run on an alternate signal stack (SA_ONSTACK), the loop also
// raises SIGUSR1 itself every 20 calls, and the SIGUSR1 handler calls add(25, 0), which the
// example probe answers with SIGUSR2: a second signal while the first handler's frames are live
// on the signal stack. The handler checks that its frame survived; the line ends with
// "frames ok" or "frames overwritten".
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t usr1, usr2, overwritten;
static volatile long last;
static int onstack;

__attribute__((noinline)) long add(long a, long b)
{
    last = a + b;
    return a + b;
}

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
    if (onstack) {
        volatile char frame[256];
        memset((char *)frame, 0x3c, sizeof frame);
        add(25, 0);
        for (size_t k = 0; k < sizeof frame; k++)
            if (frame[k] != 0x3c)
                overwritten = 1;
    }
}

static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
    if (onstack) {
        // Whatever this handler's frame lands on is overwritten.
        volatile char frame[2048];
        memset((char *)frame, 0x5a, sizeof frame);
    }
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10;
    onstack = argc > 2 && strcmp(argv[2], "onstack") == 0;
    if (onstack) {
        stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16};
        sigaltstack(&ss, NULL);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_flags = SA_ONSTACK | SA_RESTART;
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        sa.sa_handler = on_usr2;
        sigaction(SIGUSR2, &sa, NULL);
    } else {
        signal(SIGUSR1, on_usr1);
        signal(SIGUSR2, on_usr2);
    }
    for (long i = 0; i < iters; i++) {
        add(i, i);
        if (onstack && i % 20 == 5)
            raise(SIGUSR1);
    }
    printf("usr1 %d usr2 %d", (int)usr1, (int)usr2);
    if (onstack)
        printf(" frames %s", overwritten ? "overwritten" : "ok");
    printf("\n");
    return 0;
}
