// A target whose return-probed functions never return: they longjmp out, as error handling
// in C does (PostgreSQL's ereport, libpng, Lua). Each of ITERS rounds leaves `fails` by
// longjmp from the same depth, leaves `outer` (which calls `fails` one frame deeper) the same
// way, and leaves `escape`, called from a SIGUSR1 handler, by siglongjmp. Then `ok` is called
// 100 times and returns normally: its return probes must all run however many frames were
// abandoned before. Prints the sum of ok's results.
// Usage: longjmps ITERS [wait]   (with `wait` it reads a byte from stdin first)
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static jmp_buf env;
static sigjmp_buf sigenv;

__attribute__((noinline)) int fails(int i)
{
    if (i >= 0)
        longjmp(env, 1);
    return i;
}

__attribute__((noinline)) int outer(int i)
{
    return fails(i) + 1;
}

__attribute__((noinline)) int escape(int i)
{
    if (i >= 0)
        siglongjmp(sigenv, 1);
    return i;
}

static volatile int round_no;

static void on_usr1(int sig)
{
    (void)sig;
    escape(round_no);
}

__attribute__((noinline)) int ok(int i)
{
    return 3 * i + 1;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 5000;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    signal(SIGUSR1, on_usr1);
    for (round_no = 0; round_no < iters; round_no++) {
        if (setjmp(env) == 0)
            fails(round_no);
        if (setjmp(env) == 0)
            outer(round_no);
        if (sigsetjmp(sigenv, 1) == 0)
            raise(SIGUSR1);
    }
    long sum = 0;
    for (int i = 0; i < 100; i++)
        sum += ok(i);
    printf("%ld\n", sum);
    return 0;
}
