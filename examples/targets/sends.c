// A target for the signal tracepoints (signal_generate, signal_deliver): it sends itself signals
// every way a process does, with handlers installed with and without SA_SIGINFO: raise (tgkill),
// kill, sigqueue (rt_sigqueueinfo), pthread_kill to another thread, a signal whose default is to
// ignore it (SIGWINCH), one set to SIG_IGN (SIGURG), and one sent twice while blocked (the second
// finds it pending). Exits 0 once every handler ran as many times as expected.
// Usage: sends
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t usr1, usr2, in_worker;
static pthread_t main_thread;

static void on_usr1(int sig, siginfo_t *info, void *ctx)
{
    (void)sig, (void)info, (void)ctx;
    usr1++;
    if (!pthread_equal(pthread_self(), main_thread))
        in_worker++;
}

static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
}

static void *worker(void *arg)
{
    // Waits for its signal with everything else blocked.
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGUSR1);
    while (!in_worker)
        sigsuspend(&all);
    return arg;
}

int main(void)
{
    main_thread = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGUSR2, on_usr2);
    signal(SIGURG, SIG_IGN);

    raise(SIGUSR1);
    kill(getpid(), SIGUSR1);
    sigqueue(getpid(), SIGUSR1, (union sigval){ .sival_int = 7 });
    kill(getpid(), SIGWINCH);
    kill(getpid(), SIGURG);

    sigset_t usr2_set, old;
    sigemptyset(&usr2_set);
    sigaddset(&usr2_set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2_set, &old);
    kill(getpid(), SIGUSR2);
    kill(getpid(), SIGUSR2);
    sigprocmask(SIG_SETMASK, &old, NULL);

    // The worker waits with SIGUSR1 open; the main thread blocks it, so only the worker takes it.
    sigset_t usr1_set;
    sigemptyset(&usr1_set);
    sigaddset(&usr1_set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1_set, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_kill(t, SIGUSR1);
    pthread_join(t, NULL);

    printf("usr1 %d usr2 %d worker %d\n", (int)usr1, (int)usr2, (int)in_worker);
    return usr1 == 4 && usr2 == 1 && in_worker == 1 ? 0 : 1;
}
