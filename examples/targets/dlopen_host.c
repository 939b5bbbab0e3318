// Loads ./libplugin.so (path in argv[1]) after start, then calls plugin_mul N times.
// Usage: dlopen_host LIB N
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    int (*mul)(int, int) = (int (*)(int, int))dlsym(h, "plugin_mul");
    long n = atol(argv[2]), sum = 0;
    for (long i = 0; i < n; i++)
        sum += mul((int)i, 3);
    printf("sum %ld\n", sum);
    return 0;
}
