/* Sum of floor(log2(x)) over an array of 64-bit values (branchy bit scan, no builtins). */
#include "workload.h"

struct input {
    u64 n;
    u64 values[];
};

static inline __attribute__((always_inline)) u32 log2_u64(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

WORKLOAD(log2_sum)(struct input *in)
{
    u64 sum = 0;
    for (u64 i = 0; i < in->n; i++)
        sum += log2_u64(in->values[i]);
    return sum;
}
