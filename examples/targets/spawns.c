// A target that starts programs the three usual ways, for system call tracing: vfork + execve,
// posix_spawn (glibc: clone3 with CLONE_VM | CLONE_VFORK), and an execve that fails.
// Usage: spawns N   (prints how many of the 2 N children exited 0 and the failed execve's errno)
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 5;
    char *args[] = {"/bin/true", NULL};
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = vfork();
        if (pid == 0) {
            execve("/bin/true", args, environ);
            _exit(127);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ) == 0) {
            waitpid(pid, &st, 0);
            ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
        }
    }
    execve("/nonexistent/bpftime-spawns", args, environ);
    printf("%d of %d children ok, execve failed: %s\n", ok, 2 * n, strerror(errno));
    return ok != 2 * n;
}
