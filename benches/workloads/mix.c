/* A hash-like mixing loop (the finaliser of MurmurHash3, iterated). */
#include "workload.h"

struct input {
    u64 n;
    u64 seed;
};

WORKLOAD(mix)(struct input *in)
{
    u64 h = in->seed;
    for (u64 i = 0; i < in->n; i++) {
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 33;
        h += i;
    }
    return h;
}
