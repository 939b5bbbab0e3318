// Loads kprobe-type programs through bpf(2) with good and bad attributes and bodies the
// kernel's verifier refuses, and prints what each load gave, to compare with the kernel.
// Build: cc prog_load_matrix.c -lbpf -o prog_load_matrix (libbpf only to find a kfunc's BTF id)
#include <bpf/btf.h>
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define I(c, d, s, o, i) { .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) }
#define MOV0 I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0)
#define EXIT I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

static char log_buf[65536];

static void attempt(const char *what, const struct bpf_insn *insns, unsigned n, unsigned type, const char *name, const char *license, unsigned log_level,
                    char *buf, unsigned log_size, unsigned flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = type;
    a.insns = (unsigned long)insns;
    a.insn_cnt = n;
    a.license = (unsigned long)license;
    a.log_level = log_level;
    a.log_buf = (unsigned long)buf;
    a.log_size = log_size;
    a.prog_flags = flags;
    if (name)
        strncpy(a.prog_name, name, sizeof(a.prog_name));
    int fd = syscall(__NR_bpf, BPF_PROG_LOAD, &a, sizeof(a));
    printf("%s: %s\n", what, fd >= 0 ? "ok" : strerror(errno));
    if (fd >= 0)
        close(fd);
}

int main(void)
{
    struct bpf_insn ok[] = { MOV0, EXIT };
    struct bpf_insn no_r0[] = { EXIT };
    struct bpf_insn r10_write[] = { I(BPF_ALU64 | BPF_MOV | BPF_K, 10, 0, 0, 1), MOV0, EXIT };
    struct bpf_insn stack_oob[] = { I(BPF_ST | BPF_MEM | BPF_DW, 10, 0, -520, 1), MOV0, EXIT };
    struct bpf_insn jump_out[] = { I(BPF_JMP | BPF_JA, 0, 0, 5, 0), MOV0, EXIT };
    struct bpf_insn bad_opcode[] = { I(0xff, 0, 0, 0, 0), MOV0, EXIT };
    struct bpf_insn unknown_helper[] = { I(BPF_JMP | BPF_CALL, 0, 0, 0, 99999), MOV0, EXIT };
    struct bpf_insn forever[] = { I(BPF_JMP | BPF_JA, 0, 0, -1, 0), MOV0, EXIT };
    // r1 != 0 (a kprobe's context) enters a loop with no way out; exit is reachable too.
    struct bpf_insn trapped[] = { MOV0, I(BPF_JMP | BPF_JNE | BPF_K, 1, 0, 1, 0), EXIT, I(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, 1),
                                  I(BPF_JMP | BPF_JA, 0, 0, -2, 0) };
    struct bpf_insn spinning[] = { MOV0, I(BPF_JMP | BPF_JNE | BPF_K, 1, 0, 1, 0), EXIT, I(BPF_JMP | BPF_JA, 0, 0, -1, 0) };
    struct bpf_insn uninit_read[] = { I(BPF_ALU64 | BPF_MOV | BPF_X, 0, 3, 0, 0), EXIT };
    struct bpf_insn falls_off[] = { MOV0 };
    struct bpf_insn ctx_write[] = { I(BPF_ST | BPF_MEM | BPF_DW, 1, 0, 0, 1), MOV0, EXIT };
    struct bpf_insn unreachable[] = { MOV0, EXIT, MOV0, EXIT };
    attempt("a valid program", ok, 2, BPF_PROG_TYPE_KPROBE, "good_name", "GPL", 0, NULL, 0, 0);
    attempt("a name with a dash", ok, 2, BPF_PROG_TYPE_KPROBE, "bad-name", "GPL", 0, NULL, 0, 0);
    attempt("no instructions", ok, 0, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("too many instructions", ok, 1000001, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("instructions at NULL", NULL, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("an unknown program type", ok, 2, 9999, "p", "GPL", 0, NULL, 0, 0);
    attempt("an unknown program flag", ok, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 1u << 30);
    attempt("a log level without a buffer", ok, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 1, NULL, 0, 0);
    attempt("a log buffer of 10 bytes", ok, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 1, log_buf, 10, 0);
    attempt("an unknown log level", ok, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 64, log_buf, sizeof(log_buf), 0);
    attempt("a buffer without a log level", ok, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, log_buf, sizeof(log_buf), 0);
    attempt("exit with r0 unset", no_r0, 1, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a write to r10", r10_write, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a store below the stack", stack_oob, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a jump out of the program", jump_out, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("an unknown opcode", bad_opcode, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("an unknown helper", unknown_helper, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("an endless loop", forever, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a loop with no way out", trapped, 5, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a jump to itself with no way out", spinning, 4, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a read of an unset register", uninit_read, 2, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("falling off the end", falls_off, 1, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("a write to a kprobe's context", ctx_write, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    attempt("unreachable instructions", unreachable, 4, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    // Kfuncs (an RCU read section, by their ids in the kernel's BTF): fine under the GPL,
    // refused under another license; a call of a helper id nobody has.
    struct btf *vmlinux = btf__load_vmlinux_btf();
    int lock = vmlinux ? btf__find_by_name_kind(vmlinux, "bpf_rcu_read_lock", BTF_KIND_FUNC) : -1;
    int unlock = vmlinux ? btf__find_by_name_kind(vmlinux, "bpf_rcu_read_unlock", BTF_KIND_FUNC) : -1;
    if (lock > 0 && unlock > 0) {
        struct bpf_insn kfunc[] = { I(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_KFUNC_CALL, 0, lock), I(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_KFUNC_CALL, 0, unlock),
                                    MOV0, EXIT };
        attempt("kfunc calls", kfunc, 4, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
        attempt("kfunc calls, not under the GPL", kfunc, 4, BPF_PROG_TYPE_KPROBE, "p", "BSD", 0, NULL, 0, 0);
    }
    struct bpf_insn helper_3000[] = { I(BPF_JMP | BPF_CALL, 0, 0, 0, 3000), MOV0, EXIT };
    attempt("a call of helper 3000", helper_3000, 3, BPF_PROG_TYPE_KPROBE, "p", "GPL", 0, NULL, 0, 0);
    return 0;
}
