// A program that gives its thread a thread pointer of its own (arch_prctl ARCH_SET_FS), as
// Go's runtime does in a program built without cgo, makes raw system calls with it (no libc:
// libc's thread-locals are out of reach), then puts glibc's back and goes on with libc.
// A function probed there (`add`) runs as it would without probes. Usage: own_tls N   (writes N
// bytes "x" and calls add(i, 1) for i < N with its own thread pointer, then add(i, 1) N times
// again with glibc's; prints "wrote N sums S S")
#include <asm/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static long raw3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

__attribute__((noinline)) long add(long a, long b)
{
    __asm__ volatile("");
    return a + b;
}

// Its own thread-local block, as Go's m0.tls.
static unsigned long block[64];

__attribute__((noinline, no_stack_protector)) static long with_own_thread_pointer(unsigned long glibc, int n, long *sum)
{
    long written = 0;
    raw3(SYS_arch_prctl, ARCH_SET_FS, (long)&block[32], 0);
    for (int i = 0; i < n; i++) {
        written += raw3(SYS_write, 1, (long)"x", 1);
        *sum += add(i, 1);
    }
    raw3(SYS_arch_prctl, ARCH_SET_FS, (long)glibc, 0);
    return written;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10;
    unsigned long glibc = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_FS, &glibc) != 0)
        return 1;
    long own = 0, theirs = 0;
    long written = with_own_thread_pointer(glibc, n, &own);
    for (int i = 0; i < n; i++)
        theirs += add(i, 1);
    printf("\nwrote %ld sums %ld %ld\n", written, own, theirs);
    return 0;
}
