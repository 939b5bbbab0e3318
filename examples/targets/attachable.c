// A target started without the agent, for `bpftime attach PID` / `bpftime detach PID`: it
// obeys commands read from stdin while another thread keeps calling add(0, 0) (load while
// probes come and go).
//   run N   calls add(i, 1) for i < N, then prints "done SUM"
//   open P  opens file P and closes it; prints "opened FD"
//   alloc N has the other thread malloc and free N blocks; prints "allocated N"
//   fork    forks a child that calls add(0, 0) every millisecond until killed; prints "child PID"
//   block   has the other thread block every signal (pthread_sigmask) and go on; prints
//           "blocked"
//   closeall D  closes every descriptor above 2 (close_range, as daemons do), then opens
//           directory D 1,000 times (the numbers come back); prints "reopened N"
//   drop    gives up root (to nobody); prints "dropped D", D whether it is still dumpable
//   sleep MS  sleeps MS milliseconds in one nanosleep; prints "slept E", E the milliseconds
//           that passed (less where a signal handler interrupted the sleep)
//   nopipe  ignores SIGPIPE (as Python and servers do: a write to a closed pipe then fails
//           with EPIPE); prints "ignored"
//   quit    exits 0
// With the argument `forked`, the process forks first and the child does all this (its parent
// waits for it and exits with its status).
// With the argument `masked`, both threads block every signal (the other thread with
// pthread_sigmask, this one with sigprocmask), as worker threads of servers often do.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

static volatile int stop;
/// Blocks the load thread is to malloc and free (then it sets this back to 0).
static volatile long to_allocate;

static void block_every_signal(int (*set_mask)(int, const sigset_t *, sigset_t *))
{
    sigset_t all;
    sigfillset(&all);
    set_mask(SIG_BLOCK, &all, NULL);
}

/// 1: the load thread is to block every signal; 2: it has.
static volatile int block_request;

static void *load(void *arg)
{
    if (arg)
        block_every_signal(pthread_sigmask);
    while (!stop) {
        if (block_request == 1) {
            block_every_signal(pthread_sigmask);
            block_request = 2;
        }
        add(0, 0);
        if (to_allocate) {
            for (long i = 0; i < to_allocate; i++) {
                // Through a volatile pointer: the compiler may not drop the pair.
                void *volatile p = malloc(64 + i % 64);
                free(p);
            }
            to_allocate = 0;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int masked = argc > 1 && strcmp(argv[1], "masked") == 0;
    if (argc > 1 && strcmp(argv[1], "forked") == 0) {
        pid_t child = fork();
        if (child > 0) {
            int status;
            waitpid(child, &status, 0);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
    }
    if (masked)
        block_every_signal(sigprocmask);
    pthread_t t;
    pthread_create(&t, NULL, load, masked ? &t : NULL);
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run ", 4) == 0) {
            long n = atol(line + 4), sum = 0;
            for (long i = 0; i < n; i++)
                sum += add(i, 1);
            printf("done %ld\n", sum);
        } else if (strncmp(line, "open ", 5) == 0) {
            line[strcspn(line, "\n")] = 0;
            int fd = open(line + 5, O_RDONLY);
            if (fd >= 0)
                close(fd);
            printf("opened %d\n", fd);
        } else if (strncmp(line, "alloc ", 6) == 0) {
            long n = atol(line + 6);
            to_allocate = n;
            while (to_allocate)
                usleep(1000);
            printf("allocated %ld\n", n);
        } else if (strncmp(line, "fork", 4) == 0) {
            pid_t child = fork();
            if (child == 0) {
                // Calls add(0, 0) every millisecond until killed (or its parent ends).
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                for (;;) {
                    add(0, 0);
                    usleep(1000);
                }
            }
            printf("child %d\n", (int)child);
        } else if (strncmp(line, "block", 5) == 0) {
            block_request = 1;
            while (block_request != 2)
                usleep(1000);
            printf("blocked\n");
        } else if (strncmp(line, "closeall ", 9) == 0) {
            line[strcspn(line, "\n")] = 0;
            syscall(SYS_close_range, 3, ~0U, 0);
            int n = 0;
            for (int i = 0; i < 1000; i++)
                n += open(line + 9, O_RDONLY | O_DIRECTORY) >= 0;
            printf("reopened %d\n", n);
        } else if (strncmp(line, "drop", 4) == 0) {
            if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
                perror("setresuid");
            printf("dropped %d\n", prctl(PR_GET_DUMPABLE));
        } else if (strncmp(line, "sleep ", 6) == 0) {
            long ms = atol(line + 6);
            struct timespec want = {ms / 1000, ms % 1000 * 1000000L}, t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            nanosleep(&want, NULL);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            printf("slept %ld\n", (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        } else if (strncmp(line, "nopipe", 6) == 0) {
            signal(SIGPIPE, SIG_IGN);
            printf("ignored\n");
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
