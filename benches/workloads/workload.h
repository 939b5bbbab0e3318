/* Shared by every workload: built as eBPF (clang -target bpf) and as native code (cc). */
#ifndef WORKLOAD_H
#define WORKLOAD_H

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;

#ifdef __bpf__
/* An eBPF program: r1 points at the input, the result is r0. */
#define WORKLOAD(name) __attribute__((section("vm"), used)) u64 name
#else
/* The same function as native code, called by the benchmark through FFI. */
#define WORKLOAD(name) u64 native_##name
#endif

#endif
