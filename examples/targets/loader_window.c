// A program whose constructor does what library constructors do while the dynamic loader's
// system calls may still be recorded (libbpftime_audit.so, until the agent starts, or until
// every constructor has run where no agent starts): it makes a call with a bad path pointer,
// blocks a signal, sets a signal stack, and starts and joins a thread (glibc blocks every
// signal around the clone and puts the mask back). `main` prints what the process is left with;
// it must print the same with and without the recording.
// Run: ./loader_window
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int access_result, access_errno;
static char alternate_stack[1 << 16];

static void *thread_main(void *arg)
{
    return arg;
}

__attribute__((constructor)) static void early_work(void)
{
    access_result = access((const char *)16, F_OK);
    access_errno = errno;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    stack_t ss = { .ss_sp = alternate_stack, .ss_size = sizeof alternate_stack, .ss_flags = 0 };
    sigaltstack(&ss, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) == 0)
        pthread_join(t, NULL);
}

int main(void)
{
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    stack_t ss;
    sigaltstack(NULL, &ss);
    struct sigaction sys;
    sigaction(SIGSYS, NULL, &sys);
    printf("SIGUSR1 blocked %d, SIGSYS blocked %d, SIGSYS default %d, signal stack %s, access %d errno %d\n", sigismember(&now, SIGUSR1),
           sigismember(&now, SIGSYS), sys.sa_handler == SIG_DFL, ss.ss_sp == alternate_stack ? "kept" : "lost", access_result, access_errno);
    return 0;
}
