// A target measuring how much of the application's stack a probe hit uses: measure() paints
// 64 KiB below its frame, calls add() (probed) and finds the lowest byte the call changed.
// Usage: stack_use N [T [jump]]   (prints "stack used: B bytes" for N calls, then "sum S"; with T
// above 0, then runs T threads one after the other, each calling add() once, and prints
// "mappings grew by M": how many lines /proc/self/maps gained over them, for what threads leave
// behind). With `jump`, first calls add(-1, 0) and add(-2, -1), whose entry and return probes
// (examples/bpf/stack_use.bpf.c) answer with a SIGUSR1 to the thread, whose handler leaves by
// siglongjmp, then reads from an empty pipe until a timer's SIGALRM, whose handler leaves the
// same way, and prints "jumped J" (3 once the three signals came).
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define PAINTED 65536

__attribute__((noinline)) long add(long a, long b)
{
    __asm__ volatile("" ::: "memory");
    return a + b;
}

__attribute__((noinline)) static void paint(void)
{
    volatile uint8_t below[PAINTED];
    memset((void *)below, 0xa5, sizeof below);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static long measure(long i, long *sum)
{
    uint8_t *frame = __builtin_frame_address(0);
    paint();
    *sum += add(i, i);
    uint8_t *p = frame - PAINTED + 512;
    while (p < frame && *p == 0xa5)
        p++;
    return frame - p;
}

static sigjmp_buf back;

static void leave_by_jump(int sig)
{
    siglongjmp(back, sig);
}

// Whether add(a, b) was left by the signal's jump.
__attribute__((noinline)) static int jumped(long a, long b)
{
    if (sigsetjmp(back, 1) == 0) {
        add(a, b);
        return 0;
    }
    return 1;
}

// Whether a read of an empty pipe was left by a timer's signal's jump.
__attribute__((noinline)) static int timed_out(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    struct itimerval in_20ms = {.it_value = {.tv_usec = 20000}};
    if (sigsetjmp(back, 1) == 0) {
        setitimer(ITIMER_REAL, &in_20ms, NULL);
        char c;
        (void)!read(fds[0], &c, 1);
        return 0;
    }
    return 1;
}

static void *call_add(void *arg)
{
    *(long *)arg = add(1, 1);
    return NULL;
}

static void run_thread(void)
{
    long r;
    pthread_t t;
    pthread_create(&t, NULL, call_add, &r);
    pthread_join(t, NULL);
}

static long mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    long lines = 0;
    int c;
    while ((c = fgetc(f)) != EOF)
        lines += c == '\n';
    fclose(f);
    return lines;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 3, sum = 0;
    if (argc > 3 && strcmp(argv[3], "jump") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = leave_by_jump;
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGALRM, &sa, NULL);
        int by_probes = jumped(-1, 0) + jumped(-2, -1);
        printf("jumped %d\n", by_probes + timed_out());
    }
    for (long i = 0; i < n; i++)
        printf("stack used: %ld bytes\n", measure(i, &sum));
    printf("sum %ld\n", sum);
    if (argc > 2 && atol(argv[2]) > 0) {
        long threads = atol(argv[2]);
        // glibc keeps a finished thread's stack for the next one; what a thread leaves may go
        // when the next one starts, once the kernel has let the finished one go.
        run_thread();
        usleep(100000);
        run_thread();
        long before = mappings();
        for (long i = 0; i < threads; i++)
            run_thread();
        usleep(100000);
        run_thread();
        printf("mappings grew by %ld\n", mappings() - before);
    }
    return 0;
}
