// A C++ target whose return-probed functions are left by exceptions: `thrower` throws for odd
// arguments (g++ -O2 puts the throw in a `.cold` part), the exception passes through `mid` and
// is caught in `catcher`, which returns normally. The unwinder finds each function's caller
// by its return address: one replaced by a return probe must not stop it (std::terminate).
// Prints the sum of catcher's results and how many exceptions it caught.
// Usage: throws ITERS [wait]   (with `wait` it reads a byte from stdin first)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <unistd.h>

__attribute__((noinline)) int thrower(int i)
{
    if (i % 2)
        throw std::runtime_error("odd");
    return i;
}

__attribute__((noinline)) int mid(int i)
{
    int r = thrower(i);
    asm volatile("" ::: "memory");
    return r + 1;
}

static long caught;

__attribute__((noinline)) int catcher(int i)
{
    try {
        return mid(i);
    } catch (const std::exception &) {
        caught++;
        return -1;
    }
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 1000;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    long sum = 0;
    for (int i = 0; i < iters; i++)
        sum += catcher(i);
    printf("%ld %ld\n", sum, caught);
    return 0;
}
