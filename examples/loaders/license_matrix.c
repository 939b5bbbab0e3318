// Loads a kprobe-type program that calls bpf_trace_printk, which the kernel keeps for
// GPL-compatible programs, under licenses the kernel takes as such and others, and prints
// what each load gave: the same lines as on the kernel. Build: cc license_matrix.c -o ...
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    const char *lic[] = {"GPL", "GPL v2", "Dual BSD/GPL", "Dual MIT/GPL", "Proprietary", "", "gpl", "BSD"};
    // r1 = r10 - 8 (fmt "hi\0" on stack), r2 = 3, call 6; r0 = 0; exit
    struct bpf_insn insns[] = {
        { .code = BPF_ST | BPF_MEM | BPF_W, .dst_reg = 10, .off = -8, .imm = 0x6968 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = 1, .src_reg = 10 },
        { .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = 1, .imm = -8 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 2, .imm = 3 },
        { .code = BPF_JMP | BPF_CALL, .imm = 6 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    for (int i = 0; i < 8; i++) {
        union bpf_attr a; memset(&a, 0, sizeof(a));
        a.prog_type = BPF_PROG_TYPE_KPROBE; a.insns = (unsigned long)insns; a.insn_cnt = 7; a.license = (unsigned long)lic[i];
        int fd = syscall(__NR_bpf, BPF_PROG_LOAD, &a, sizeof(a));
        printf("license '%s': %s\n", lic[i], fd >= 0 ? "ok" : strerror(errno));
        if (fd >= 0) close(fd);
    }
}
