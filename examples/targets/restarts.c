// A target whose blocking read(2) is interrupted SIGNALS times by a handler installed with
// SA_RESTART (which makes a call of its own, getppid), as a shell's SIGCHLD or a program's timer interrupts one: a child sends the
// signals 20 ms apart while the parent is blocked, then writes the byte the read waits for.
// The kernel restarts the read after each handler, and its tracepoints show each restart (an
// exit with -ERESTARTSYS, then an entry again).
// Usage: restarts SIGNALS   (prints "read 1 handled N")
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int handled;

static void on_usr1(int sig)
{
    (void)sig;
    handled++;
    (void)getppid();
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 5;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    int p[2];
    char c;
    if (pipe(p) != 0)
        return 1;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < n; i++) {
            usleep(20000);
            kill(parent, SIGUSR1);
        }
        usleep(20000);
        _exit(write(p[1], "x", 1) == 1 ? 0 : 1);
    }
    long r = read(p[0], &c, 1);
    waitpid(child, NULL, 0);
    printf("read %ld handled %d\n", r, handled);
    return r == 1 && handled == n ? 0 : 1;
}
