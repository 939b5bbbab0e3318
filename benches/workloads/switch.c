/* A dense 16-way switch in a loop over an array of opcodes. */
#include "workload.h"

struct input {
    u64 n;
    u8 ops[];
};

WORKLOAD(dense_switch)(struct input *in)
{
    u64 acc = 1;
    for (u64 i = 0; i < in->n; i++) {
        switch (in->ops[i] & 15) {
        case 0: acc += 7; break;
        case 1: acc ^= acc >> 3; break;
        case 2: acc *= 3; break;
        case 3: acc -= i; break;
        case 4: acc = (acc << 5) | (acc >> 59); break;
        case 5: acc += acc >> 7; break;
        case 6: acc ^= 0x9e3779b9; break;
        case 7: acc = ~acc; break;
        case 8: acc += i * 13; break;
        case 9: acc ^= acc << 11; break;
        case 10: acc -= 0x1234; break;
        case 11: acc = acc * 5 + 1; break;
        case 12: acc |= 0x10; break;
        case 13: acc &= ~(u64)0x100; break;
        case 14: acc += in->ops[i]; break;
        default: acc ^= i; break;
        }
    }
    return acc;
}
