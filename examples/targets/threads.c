// A target whose threads make system calls: THREADS threads, each making CALLS getppid()
// calls after setting a signal stack of its own (as Rust's runtime does in every thread), and
// one more thread made by the first of them (threads that make threads). What a
// kernel tracepoint sees of each thread includes glibc's own calls as it starts one (clone3's
// return of 0 in the new thread, rseq, set_robust_list, rt_sigprocmask) and ends it.
// Usage: threads THREADS CALLS   (prints the number of calls made)
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long calls;
static long made;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
    static __thread char altstack[16384];
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
    if (sigaltstack(&ss, NULL) != 0)
        exit(3);
    long n = 0;
    for (long i = 0; i < calls; i++)
        n += getppid() > 0;
    if (arg) {
        pthread_t inner;
        if (pthread_create(&inner, NULL, worker, NULL) != 0 || pthread_join(inner, NULL) != 0)
            exit(2);
    }
    pthread_mutex_lock(&lock);
    made += n;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = argc > 1 ? atol(argv[1]) : 4;
    calls = argc > 2 ? atol(argv[2]) : 10;
    pthread_t t[256];
    if (threads > 256)
        threads = 256;
    for (long i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, i == 0 ? (void *)1 : NULL) != 0)
            return 1;
    for (long i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    printf("%ld\n", made);
    return made == (threads + 1) * calls ? 0 : 1;
}
