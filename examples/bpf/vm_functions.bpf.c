// A map-free program for `bpftime vm run`: bpf-to-bpf calls, loops, a switch, byte swaps and
// atomics on the input memory. Build: clang-14 -target bpf -mcpu=v3 -O2 -g -c vm_functions.bpf.c
//
// Input (r1): struct input below. Result (r0): a checksum the tests compute independently.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

struct input {
    u64 n;          // number of values used (at most 16)
    u64 counter;    // incremented atomically once per value
    u32 values[16];
};

static __attribute__((noinline)) u64 mix(u64 h, u32 v)
{
    h ^= v;
    h *= 0x100000001b3ULL;
    return h;
}

static __attribute__((noinline)) u32 classify(u32 v)
{
    switch (v % 6) {
    case 0: return v >> 1;
    case 1: return v * 3 + 1;
    case 2: return __builtin_bswap32(v);
    case 3: return (u16)__builtin_bswap16((u16)v);
    case 4: return v ^ 0xa5a5a5a5;
    default: return ~v;
    }
}

__attribute__((section("vm"), used)) u64 checksum(struct input *in)
{
    u64 h = 0xcbf29ce484222325ULL;
    u64 n = in->n > 16 ? 16 : in->n;
    for (u64 i = 0; i < n; i++) {
        h = mix(h, classify(in->values[i]));
        __sync_fetch_and_add(&in->counter, 1);
    }
    return h;
}
