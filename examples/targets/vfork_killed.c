// A vfork child killed while a system call it made blocks (a read of an empty pipe): under
// interception our code made that call for it, on the thread-locals it shares with its
// waiting parent. The parent then makes calls it never made before (getppid), which must be
// seen as ever.
// Usage: vfork_killed N   (prints "child killed by 9, getppid N")
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int pid_pipe[2];

/// Kills the child whose pid comes down the pipe once it blocks in its read.
static void *killer(void *arg)
{
    (void)arg;
    pid_t pid;
    if (read(pid_pipe[0], &pid, sizeof pid) != sizeof pid)
        return NULL;
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", pid);
    for (int i = 0; i < 10000; i++) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strncmp(buf, "0 ", 2) == 0)
            break;
        usleep(1000);
    }
    kill(pid, SIGKILL);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    int empty[2];
    pthread_t t;
    if (pipe(pid_pipe) != 0 || pipe(empty) != 0 || pthread_create(&t, NULL, killer, NULL) != 0)
        return 1;
    pid_t pid = vfork();
    if (pid == 0) {
        pid_t me = getpid();
        char c;
        if (write(pid_pipe[1], &me, sizeof me) == sizeof me)
            read(empty[0], &c, 1);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    pthread_join(t, NULL);
    long calls = 0;
    for (int i = 0; i < n; i++)
        calls += getppid() > 0;
    printf("child killed by %d, getppid %ld\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0, calls);
    return 0;
}
