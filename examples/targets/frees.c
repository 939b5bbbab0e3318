// A target for counting libc free() calls: N malloc/free pairs on the main thread and N on a
// second thread that then exits. Usage: frees N [wait]   (with `wait`, reads one byte from
// stdin first, so that a loader can attach to the running process)
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static long n;

static void *work(void *arg)
{
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(16 + i % 64);
        free(p);
    }
    return arg;
}

int main(int argc, char **argv)
{
    n = argc > 1 ? atol(argv[1]) : 10;
    if (argc > 2) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    work(NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, work, NULL) != 0 || pthread_join(t, NULL) != 0)
        return 3;
    return 0;
}
