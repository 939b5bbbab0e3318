// A target for probes hit from signal handlers: the main thread calls add() ITERS times while
// another thread sends it SIGUSR1 as fast as it can; the handler calls add() too, so signals
// land inside probe handlers and inside uretprobes' return paths.
// Usage: signals ITERS [altstack|highaltstack|nested|rawnested]   (prints "calls N sum S": every add() call (at
// least ITERS from the loop, more until the handler has run 10 times) and the sum of their
// results; with `altstack` the handler is installed with sigaction on an alternate signal
// stack, else with signal(); with `highaltstack` the loop runs on a thread whose stack lies
// below its signal stack, as a coroutine's or a thread's in static memory may). The line ends
// with "foreign F elsewhere E": how many times the handler ran on a stack that was neither the
// thread's nor its signal stack (F), and how many times the signal interrupted code running on
// such a stack (E: a probe's handlers, on the agent's stack). `nested` is `altstack` with a
// second signal, SIGUSR2 (its handler on the signal stack too), sent as fast: landing while
// SIGUSR1's handler runs a probe, it must find the signal stack in use, not free (the kernel
// would deliver it over the first handler's live frames); the line then ends with "clobbered
// C": how many times the first handler found its frame overwritten. It reads one byte from
// stdin first (end of file will do), so that `bpftime attach` can come before the loop.
// `rawnested` installs both handlers after that read with the raw rt_sigaction(2) system call,
// as the Go runtime does: no `sigaction` wrapper sees them.
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

static volatile long handler_calls, handler_sum, foreign;
static volatile int done;
static pthread_t main_thread;
// The looping thread's stack and its signal stack.
static char *stack_lo, *stack_hi, *alt_lo, *alt_hi;

static volatile long elsewhere;
static volatile long clobbered, usr2_calls;
static int nested, raw;

// rt_sigreturn, for handlers installed with the raw system call.
extern void signals_restorer(void);
__asm__(".text\n.globl signals_restorer\nsignals_restorer:\n\tmov $15, %eax\n\tsyscall\n");

// rt_sigaction(2) itself (the kernel's struct sigaction on x86-64), bypassing libc.
static int raw_sigaction(int sig, void *handler, unsigned long flags)
{
    struct {
        void *handler;
        unsigned long flags;
        void (*restorer)(void);
        unsigned long mask;
    } act = {handler, flags | 0x04000000 /* SA_RESTORER */, signals_restorer, 0};
    return syscall(SYS_rt_sigaction, sig, &act, NULL, 8);
}

static int on_known_stack(char *p)
{
    return (p >= stack_lo && p < stack_hi) || (p >= alt_lo && p < alt_hi);
}

// On x86-64 every handler gets the signal's context, installed with SA_SIGINFO or not.
static void on_usr1(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    ucontext_t *uc = context;
    if (!on_known_stack((char *)uc->uc_mcontext.gregs[REG_RSP]))
        elsewhere++;
    if (!on_known_stack(__builtin_frame_address(0)))
        foreign++;
    volatile long canary[8];
    for (int k = 0; k < 8; k++)
        canary[k] = 0x5eed0000 + k + handler_calls;
    handler_sum += add(handler_calls, 7);
    for (int k = 0; k < 8; k++)
        if (canary[k] != 0x5eed0000 + k + handler_calls) {
            clobbered++;
            break;
        }
    handler_calls++;
}

static void on_usr2(int sig)
{
    (void)sig;
    // A frame of some size on the signal stack.
    volatile char scratch[512];
    for (int k = 0; k < 512; k += 64)
        scratch[k] = (char)k;
    usr2_calls += scratch[0] + 1;
}

static void *pester(void *arg)
{
    (void)arg;
    while (!done) {
        pthread_kill(main_thread, SIGUSR1);
        if (nested)
            pthread_kill(main_thread, SIGUSR2);
        for (volatile int k = 0; k < 300; k++)
            ;
    }
    return NULL;
}

static long iters, work_sum, work_calls;
static int alt;

// The loop: add() called ITERS times (more until the handler has run a few times: on a busy
// machine the other thread may not have started before fast probes are done), while another
// thread signals this one.
static void *work(void *arg)
{
    (void)arg;
    if (alt) {
        // The signal stack is per thread; malloc'd (in `highaltstack` mode, above this
        // thread's stack, which is in .bss).
        stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16};
        alt_lo = ss.ss_sp;
        alt_hi = alt_lo + ss.ss_size;
        sigaltstack(&ss, NULL);
    }
    pthread_attr_t attr;
    void *lo;
    size_t size;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &lo, &size);
    stack_lo = lo;
    stack_hi = stack_lo + size;
    main_thread = pthread_self();
    pthread_t t;
    pthread_create(&t, NULL, pester, NULL);
    long sum = 0, i;
    for (i = 0; i < iters || handler_calls < 10; i++)
        sum += add(i, 1);
    done = 1;
    pthread_join(t, NULL);
    work_sum = sum;
    work_calls = i;
    return NULL;
}

int main(int argc, char **argv)
{
    iters = argc > 1 ? atol(argv[1]) : 100000;
    const char *mode = argc > 2 ? argv[2] : "";
    raw = strcmp(mode, "rawnested") == 0;
    nested = strcmp(mode, "nested") == 0 || raw;
    alt = strcmp(mode, "altstack") == 0 || strcmp(mode, "highaltstack") == 0 || nested;
    if (nested && !raw) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr2;
        sa.sa_flags = SA_RESTART | SA_ONSTACK;
        sigaction(SIGUSR2, &sa, NULL);
    }
    if (nested) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    if (raw) {
        if (raw_sigaction(SIGUSR2, on_usr2, SA_RESTART | SA_ONSTACK) || raw_sigaction(SIGUSR1, on_usr1, SA_SIGINFO | SA_RESTART | SA_ONSTACK))
            return 1;
    } else if (alt) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_usr1;
        sa.sa_flags = SA_SIGINFO;
        sa.sa_flags |= SA_RESTART | SA_ONSTACK;
        sigaction(SIGUSR1, &sa, NULL);
    } else {
        signal(SIGUSR1, (void (*)(int))on_usr1);
    }
    if (strcmp(mode, "highaltstack") == 0) {
        // The loop on a thread whose stack is below its signal stack.
        static char low_stack[1 << 18] __attribute__((aligned(4096)));
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstack(&a, low_stack, sizeof low_stack);
        pthread_t w;
        pthread_create(&w, &a, work, NULL);
        pthread_join(w, NULL);
    } else {
        work(NULL);
    }
    // What the application reads back is the handler it installed.
    struct sigaction now;
    sigaction(SIGUSR1, NULL, &now);
    if (now.sa_sigaction != on_usr1) {
        printf("sigaction reports another handler\n");
        return 1;
    }
    printf("calls %ld sum %ld foreign %ld elsewhere %ld", work_calls + handler_calls, work_sum + handler_sum, foreign, elsewhere);
    if (nested)
        printf(" clobbered %ld", clobbered);
    printf("\n");
    return 0;
}
