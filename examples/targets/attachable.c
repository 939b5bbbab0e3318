// A target started without the agent, for `bpftime attach PID` / `bpftime detach PID`: it
// obeys commands read from stdin while another thread keeps calling add(0, 0) (load while
// probes come and go).
//   run N   calls add(i, 1) for i < N, then prints "done SUM"
//   quit    exits 0
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile long last_sum;

__attribute__((noinline)) long add(long a, long b)
{
    long s = a + b;
    last_sum = s;
    return s;
}

static volatile int stop;

static void *load(void *arg)
{
    (void)arg;
    while (!stop)
        add(0, 0);
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
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
