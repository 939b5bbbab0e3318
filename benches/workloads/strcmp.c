/* strcmp of two NUL-terminated strings of up to 1024 bytes. */
#include "workload.h"

struct input {
    u64 max;
    u8 a[1024];
    u8 b[1024];
};

WORKLOAD(str_compare)(struct input *in)
{
    for (u64 i = 0; i < in->max && i < 1024; i++) {
        u8 x = in->a[i], y = in->b[i];
        if (x != y)
            return x < y ? (u64)-1 : 1;
        if (x == 0)
            return 0;
    }
    return 0;
}
