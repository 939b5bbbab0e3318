// A target for return probes on functions that return twice: VFORKS times vfork(), whose
// child returns 0 from it and then exits, after which the parent returns the child's pid; and
// JUMPS times _setjmp(), returning 0, then 1 again when longjmp() comes back to it.
// Prints how many children exited 0 and how many times setjmp returned 1.
// Usage: twice VFORKS JUMPS [wait]   (with `wait` it reads a byte from stdin first)
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static jmp_buf env;

__attribute__((noinline)) static void jump_back(void)
{
    longjmp(env, 1);
}

int main(int argc, char **argv)
{
    int vforks = argc > 1 ? atoi(argv[1]) : 10, jumps = argc > 2 ? atoi(argv[2]) : 10;
    if (argc > 3 && strcmp(argv[3], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    int exited = 0;
    for (int i = 0; i < vforks; i++) {
        pid_t p = vfork();
        if (p == 0)
            _exit(0);
        int status;
        if (p > 0 && waitpid(p, &status, 0) == p && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            exited++;
    }
    volatile int returned_again = 0;
    for (volatile int i = 0; i < jumps; i++) {
        if (_setjmp(env) == 0)
            jump_back();
        else
            returned_again++;
    }
    printf("%d %d\n", exited, returned_again);
    return 0;
}
