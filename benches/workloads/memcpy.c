/* Copy `len` bytes (a multiple of 8) from the first half of the buffer to the second. */
#include "workload.h"

struct input {
    u64 len;
    u64 data[];
};

WORKLOAD(copy)(struct input *in)
{
    u64 words = in->len / 8;
    u64 *src = in->data;
    u64 *dst = in->data + words;
    for (u64 i = 0; i < words; i++)
        dst[i] = src[i];
    return dst[words - 1];
}
