// A small allocation-heavy workload: N rounds of malloc/free of varying sizes.
// Usage: malloc_workload N
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    void *keep[64] = {0};
    unsigned long seed = 88172645463325252UL, bytes = 0;
    for (long i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        size_t size = 1UL << (seed % 16);
        int slot = (seed >> 16) % 64;
        free(keep[slot]);
        keep[slot] = malloc(size);
        memset(keep[slot], 1, size < 64 ? size : 64);
        bytes += size;
    }
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    printf("%ld allocations, %lu bytes\n", n, bytes);
    return 0;
}
