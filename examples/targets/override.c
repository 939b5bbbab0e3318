// A target for bpf_override_return and ureplace: check_password() refuses every password but
// "secret"; compute(x) returns 3x.
// Usage: override ITERS   (prints "accepted A sum S")
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) int check_password(const char *pw)
{
    return strcmp(pw, "secret") == 0 ? 0 : -13;
}

__attribute__((noinline)) long compute(long x)
{
    __asm__ volatile("" ::: "memory");
    return x * 3;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10;
    long accepted = 0, sum = 0;
    for (long i = 0; i < iters; i++) {
        accepted += check_password(i % 2 ? "secret" : "guess") == 0;
        sum += compute(i);
    }
    printf("accepted %ld sum %ld\n", accepted, sum);
    return 0;
}
