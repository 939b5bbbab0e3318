// A target that makes child processes every way a C program can: glibc's fork() (which runs
// fork handlers; the child also sets its parent-death signal with prctl), _Fork() (none) and
// a raw fork system call, N of each, from a process with a second thread, and with a fork
// handler of its own that makes a call in each fork() child. Each child calls getppid() and
// exits. For system call tracing: what the kernel sees of each child.
// Usage: fork_kinds N   (prints how many children exited 0)
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t _Fork(void);

static void in_child(void)
{
    getppid();
}

static void *idle(void *arg)
{
    (void)arg;
    pause();
    return NULL;
}

static int reap(pid_t pid)
{
    int status = 0;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 3, ok = 0;
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) != 0 || pthread_atfork(NULL, NULL, in_child) != 0)
        return 1;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            getppid();
            _exit(0);
        }
        ok += reap(pid);
        pid = _Fork();
        if (pid == 0) {
            getppid();
            _exit(0);
        }
        ok += reap(pid);
        pid = syscall(SYS_fork);
        if (pid == 0) {
            getppid();
            syscall(SYS_exit_group, 0);
        }
        ok += reap(pid);
    }
    printf("%d of %d children exited 0\n", ok, 3 * n);
    return ok == 3 * n ? 0 : 1;
}
