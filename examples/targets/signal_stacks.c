// A target for system call interception on threads with a small signal stack, as every Rust
// thread has (8 KiB): calls from sites of their own (each `syscall` instruction below comes to
// the interceptor as a signal the first time, on that signal stack), a signal whose handler is
// not SA_ONSTACK landing while such a call blocks (its handler must run on the thread's stack,
// as without interception), the signal stack replaced from such a site, and the thread's exit.
// Usage: signal_stacks   (prints what it saw; the same with and without interception)
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SMALL 8192

static char *thread_lo, *thread_hi;
static volatile int handler_on_thread_stack = -1;
static int fds[2];
static pthread_t main_thread;

static void on_usr1(int sig)
{
    (void)sig;
    char *here = __builtin_frame_address(0);
    handler_on_thread_stack = here >= thread_lo && here < thread_hi;
}

// Each a `syscall` instruction of its own.
static long read_here(int fd, void *buf, long n)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(SYS_read), "D"(fd), "S"(buf), "d"(n) : "rcx", "r11", "memory");
    return r;
}

static long getppid_here(void)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(SYS_getppid) : "rcx", "r11", "memory");
    return r;
}

static long sigaltstack_here(const stack_t *ss, stack_t *old)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(SYS_sigaltstack), "D"(ss), "S"(old) : "rcx", "r11", "memory");
    return r;
}

static void small_signal_stack(void)
{
    stack_t ss = {.ss_sp = malloc(SMALL), .ss_size = SMALL};
    sigaltstack(&ss, NULL);
}

static void *kicker(void *arg)
{
    (void)arg;
    usleep(200000);
    pthread_kill(main_thread, SIGUSR1);
    usleep(100000);
    if (write(fds[1], "x", 1) != 1)
        abort();
    return NULL;
}

static void *worker(void *arg)
{
    (void)arg;
    small_signal_stack();
    long n = 0;
    for (int i = 0; i < 1000; i++)
        n += getppid_here() == getppid();
    return (void *)n;
}

int main(void)
{
    small_signal_stack();
    pthread_attr_t attr;
    void *lo;
    size_t size;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &lo, &size);
    thread_lo = lo;
    thread_hi = thread_lo + size;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART; // not SA_ONSTACK
    sigaction(SIGUSR1, &sa, NULL);
    if (pipe(fds))
        return 1;
    main_thread = pthread_self();
    pthread_t k, w;
    pthread_create(&k, NULL, kicker, NULL);
    char c = 0;
    long r = read_here(fds[0], &c, 1);
    pthread_join(k, NULL);
    printf("read %ld '%c', the non-SA_ONSTACK handler ran on the %s\n", r, c, handler_on_thread_stack == 1 ? "thread's stack" : "wrong stack");
    pthread_create(&w, NULL, worker, NULL);
    void *n;
    pthread_join(w, &n);
    printf("the thread with a small signal stack made %ld calls\n", (long)n);
    static char big[1 << 16];
    stack_t now = {.ss_sp = big, .ss_size = sizeof big}, seen;
    printf("signal stack replaced: %ld", sigaltstack_here(&now, NULL));
    sigaltstack(NULL, &seen);
    printf(", now %s\n", seen.ss_sp == big && seen.ss_size == sizeof big ? "the new one" : "another");
    return 0;
}
