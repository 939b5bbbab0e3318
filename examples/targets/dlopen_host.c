// Loads a library (path in argv[1]) after start, then calls its plugin_mul N times.
// Usage: dlopen_host LIB N [ROUNDS [step]]
// With ROUNDS, does that ROUNDS times, unloading the library (dlclose) after each round and
// loading it again for the next; with `step`, prints "ready" and reads a line from stdin
// before each round. Prints "sum S" (the sum of plugin_mul(i, 3) for i < N over all rounds).
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = atol(argv[2]), sum = 0;
    int rounds = argc > 3 ? atoi(argv[3]) : 1;
    int step = argc > 4 && strcmp(argv[4], "step") == 0;
    char line[64];
    for (int round = 0; round < rounds; round++) {
        if (step) {
            printf("ready\n");
            fflush(stdout);
            if (!fgets(line, sizeof line, stdin))
                return 3;
        }
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        int (*mul)(int, int) = (int (*)(int, int))dlsym(h, "plugin_mul");
        for (long i = 0; i < n; i++)
            sum += mul((int)i, 3);
        if (rounds > 1 && dlclose(h) != 0)
            return 4;
    }
    printf("sum %ld\n", sum);
    return 0;
}
