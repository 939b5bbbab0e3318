// A target that raises SIGSYS or SIGTRAP with their default action (after sigaction and raise
// of another signal, so that libc's call sites for them have run before): the process ends by
// the signal, as without tracing.
// Usage: raises sys|trap   (prints "survived" if it does not end)
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_usr1(int sig) { (void)sig; }
int main(int argc, char **argv) {
    int sig = strcmp(argv[1], "trap") == 0 ? SIGTRAP : SIGSYS;
    // Calls through libc's sigaction and raise first (their sites get rewritten).
    signal(SIGUSR1, on_usr1);
    raise(SIGUSR1);
    raise(SIGUSR1);
    raise(sig);
    printf("survived %d\n", sig);
    return 0;
}
