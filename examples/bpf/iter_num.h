// The kernel's numeric iterator (libbpf's bpf_for() is written with it): its state and kfuncs,
// declared as the kernel's BTF has them (Debian 12's headers predate them).
#pragma once
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

struct bpf_iter_num {
    __u64 __opaque[1];
} __attribute__((aligned(8)));

extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;
