// A target started without the agent, for `bpftime attach PID` / `bpftime detach PID`: it
// obeys commands read from stdin while another thread keeps calling add(0, 0) (load while
// probes come and go).
//   run N   calls add(i, 1) for i < N, then prints "done SUM"
//   open P  opens file P and closes it; prints "opened FD"
//   alloc N has the other thread malloc and free N blocks; prints "allocated N"
//   fork    forks a child that calls add(0, 0) every millisecond until killed; prints "child PID"
//   quit    exits 0
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

static void *load(void *arg)
{
    (void)arg;
    while (!stop) {
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

int main(void)
{
    pthread_t t;
    pthread_create(&t, NULL, load, NULL);
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
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
