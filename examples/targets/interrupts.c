// A target whose blocking system calls are each interrupted by a signal whose handler was
// installed without SA_RESTART (a child sends SIGUSR1 every 20 ms until the parent is done):
// read of a pipe, nanosleep, clock_nanosleep to an absolute time, pause, poll without and with a
// timeout, select, ppoll, epoll_wait, futex waits without and with a timeout, wait4 and
// rt_sigtimedwait. The handler makes a call of its own (getppid). Each returns EINTR to the program; the kernel's tracepoints show the code the
// call gave before the signal's delivery turned it into EINTR (-ERESTARTSYS,
// -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK), or EINTR where the call gave that itself.
// Usage: interrupts   (prints how many calls returned EINTR, of 13)
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_usr1(int sig)
{
    (void)sig;
    // A call of the handler's own: the kernel's tracepoints show the interrupted call's exit
    // before it.
    (void)getppid();
}

static int eintr(long r)
{
    return r == -1 && errno == EINTR;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t parent = getpid();
    pid_t sender = fork();
    if (sender == 0) {
        prctl(PR_SET_NAME, "sender");
        for (;;) {
            usleep(20000);
            if (kill(parent, SIGUSR1) != 0)
                _exit(0);
        }
    }
    pid_t sleeper = fork();
    if (sleeper == 0) {
        prctl(PR_SET_NAME, "sleeper");
        sleep(30);
        _exit(0);
    }
    int p[2], ep = epoll_create1(0), n = 0;
    if (pipe(p) != 0 || ep < 0)
        return 1;
    struct epoll_event ev = { .events = EPOLLIN };
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    char c;
    struct timespec ten = { 10, 0 }, later;
    clock_gettime(CLOCK_MONOTONIC, &later);
    later.tv_sec += 10;
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    fd_set set;
    int word = 0;
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGUSR2);
    n += eintr(read(p[0], &c, 1));
    n += eintr(nanosleep(&ten, NULL));
    n += clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &later, NULL) == EINTR;
    n += eintr(pause());
    n += eintr(poll(&pf, 1, -1));
    n += eintr(poll(&pf, 1, 10000));
    FD_ZERO(&set);
    FD_SET(p[0], &set);
    n += eintr(select(p[0] + 1, &set, NULL, NULL, NULL));
    n += eintr(ppoll(&pf, 1, NULL, NULL));
    n += eintr(epoll_wait(ep, &ev, 1, -1));
    n += eintr(syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0));
    n += eintr(syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &ten, NULL, 0));
    n += eintr(waitpid(sleeper, NULL, 0));
    n += eintr(sigtimedwait(&wanted, NULL, &ten));
    kill(sleeper, SIGKILL);
    kill(sender, SIGKILL);
    waitpid(sleeper, NULL, 0);
    waitpid(sender, NULL, 0);
    printf("%d of 13 returned EINTR\n", n);
    return n == 13 ? 0 : 1;
}
