// Two coroutines (ucontext) whose calls of a return-probed function switch to the other
// coroutine in the middle, so the calls' frames on two stacks interleave: step(0, i) on
// coroutine A yields to B, whose step(1, i) yields back, and A's call returns first.
// Prints the sums of step()'s results on each coroutine.
// Usage: coroutines ROUNDS [wait]   (with `wait` it reads a byte from stdin first)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static ucontext_t main_ctx, a_ctx, b_ctx;
static int rounds;
static long sums[2];

__attribute__((noinline)) int step(int who, int i)
{
    if (who == 0)
        swapcontext(&a_ctx, &b_ctx);
    else
        swapcontext(&b_ctx, &a_ctx);
    return who * 1000 + i;
}

static void run_a(void)
{
    for (int i = 0; i < rounds; i++)
        sums[0] += step(0, i);
    swapcontext(&a_ctx, &b_ctx);
}

static void run_b(void)
{
    for (int i = 0; i < rounds; i++)
        sums[1] += step(1, i);
    swapcontext(&b_ctx, &main_ctx);
}

int main(int argc, char **argv)
{
    rounds = argc > 1 ? atoi(argv[1]) : 10;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    static char stack_a[1 << 16], stack_b[1 << 16];
    getcontext(&a_ctx);
    a_ctx.uc_stack.ss_sp = stack_a;
    a_ctx.uc_stack.ss_size = sizeof stack_a;
    a_ctx.uc_link = &main_ctx;
    makecontext(&a_ctx, run_a, 0);
    getcontext(&b_ctx);
    b_ctx.uc_stack.ss_sp = stack_b;
    b_ctx.uc_stack.ss_size = sizeof stack_b;
    b_ctx.uc_link = &main_ctx;
    makecontext(&b_ctx, run_b, 0);
    swapcontext(&main_ctx, &a_ctx);
    printf("%ld %ld\n", sums[0], sums[1]);
    return 0;
}
