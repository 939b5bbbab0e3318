// A target for the process lifecycle tracepoints (sched_process_exec, _fork, _exit): the main
// thread starts two threads that return, then forks three children: one exits with `_exit(7)`,
// one starts a thread that ends the whole process with `exit(5)` while the main thread waits
// (every thread's exit is an event, the main one's too), and one starts a thread that execs
// this program again (the exec'ing thread takes the process's id: the main thread ends first),
// which exits with 4. The main thread waits for all and exits 0.
// Usage: lifecycle            (as the exec'd child: lifecycle exec-child)
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *returns(void *arg)
{
    return arg;
}

static void *ends_the_process(void *arg)
{
    (void)arg;
    exit(5);
}

static const char *exec_name;

static void *execs_again(void *arg)
{
    (void)arg;
    execl("/proc/self/exe", exec_name, "exec-child", (char *)NULL);
    _exit(127);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "exec-child") == 0)
        return 4;
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, returns, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pid_t kids[3];
    if ((kids[0] = fork()) == 0)
        _exit(7);
    if ((kids[1] = fork()) == 0) {
        pthread_t w;
        pthread_create(&w, NULL, ends_the_process, NULL);
        for (;;)
            pause();
    }
    if ((kids[2] = fork()) == 0) {
        pthread_t e;
        exec_name = argv[0];
        pthread_create(&e, NULL, execs_again, NULL);
        for (;;)
            pause();
    }
    int bad = 0;
    const int expected[3] = {7, 5, 4};
    for (int i = 0; i < 3; i++) {
        int status = 0;
        waitpid(kids[i], &status, 0);
        bad |= !WIFEXITED(status) || WEXITSTATUS(status) != expected[i];
    }
    return bad;
}
