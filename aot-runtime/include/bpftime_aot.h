/*
 * bpftime_aot.h: run eBPF programs compiled ahead of time into a C program.
 *
 *   bpftime aot compile prog.bpf.o -o prog.aot.o
 *   cc main.c prog.aot.o libbpftime_aot.a -lpthread -ldl -lm -o main
 *
 * The AOT object holds each program's machine code, the eBPF object it came from and what the
 * verifier proved; this library creates the object's maps, checks each program's code was
 * compiled for exactly what it loaded (this build, this CPU, these maps) and runs it. A program
 * whose code does not match runs in the interpreter instead (bpftime_aot_native says why):
 * nothing is compiled at run time. One AOT object per C program; its compiled code serves one
 * open handle at a time (a second handle opened meanwhile runs its programs in the
 * interpreter). BPFTIME_CHECKS=all in the
 * environment keeps every run-time memory check, so no program runs its compiled code, which
 * checks only the accesses the verifier could not prove.
 *
 * Every call but bpftime_aot_open returns 0 or a negative errno. Runs and map operations may
 * come from any thread at once; open and close may not overlap any other call on the handle.
 */
#ifndef BPFTIME_AOT_H
#define BPFTIME_AOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct bpftime_aot;

/* Loads the linked-in AOT object: its maps are created in a private memory region, or in the
 * shared region `shm_name` (as `bpftime shm create NAME` makes; created if absent) when not
 * NULL, where `bpftime map dump` and other processes see them. NULL on failure, with the
 * reason in `err` (`err_len` bytes, NUL-terminated) when `err` is not NULL. */
struct bpftime_aot *bpftime_aot_open(const char *shm_name, char *err, size_t err_len);

/* Runs `program` (its function name) on the `ctx_len` bytes at `ctx` (r1 = ctx, r2 = ctx_len),
 * storing r0 in `*r0`. -ENOENT: no such program; -EFAULT: the program faulted (a memory access
 * out of bounds, ...) and its run ended; -EINVAL: a NULL argument. */
int bpftime_aot_run(struct bpftime_aot *aot, const char *program, void *ctx, size_t ctx_len, uint64_t *r0);

/* 1 when `program` runs its compiled code, 0 when it runs in the interpreter (why in `why`,
 * if not NULL), -ENOENT when there is no such program. */
int bpftime_aot_native(struct bpftime_aot *aot, const char *program, char *why, size_t why_len);

/* Copies the value of `key` in map `map` to `value`, as bpf_map_lookup_elem(2) from user space
 * does (per-CPU maps: one 8-byte-aligned value per possible CPU; see
 * bpftime_aot_map_value_size). `key` may be NULL for maps without keys (queues, stacks).
 * -ENOENT: no such key or map. */
int bpftime_aot_map_lookup(struct bpftime_aot *aot, const char *map, const void *key, void *value);

/* Bytes a value of map `map` takes in bpftime_aot_map_lookup and _update (for per-CPU maps,
 * one 8-byte-aligned value per possible CPU), or -ENOENT. */
int64_t bpftime_aot_map_value_size(struct bpftime_aot *aot, const char *map);

/* Stores `value` under `key` in map `map` (flags: BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2). */
int bpftime_aot_map_update(struct bpftime_aot *aot, const char *map, const void *key, const void *value, uint64_t flags);

/* Frees the handle. A private region and its maps go with it. */
void bpftime_aot_close(struct bpftime_aot *aot);

#ifdef __cplusplus
}
#endif

#endif
