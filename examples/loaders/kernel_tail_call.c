// A loader as bpftime's tail call example writes one: it loads an eBPF object whose uprobe
// tail-calls `targets[0]`, and puts there a program it loads into the kernel itself (with
// libc's own `syscall`, past any interposition): a raw tracepoint program (the kind the kernel
// can test-run) that counts its runs in a kernel array map. Attaches the uprobe to add() of
// BINARY, says "attached", waits for a line on stdin, then prints `stats[K] = V` of the
// object's map and `kernel runs = N` of the kernel's.
// Build: cc -O2 kernel_tail_call.c -lbpf -ldl -o kernel_tail_call
// Usage: kernel_tail_call OBJ BINARY
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dlfcn.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>

static long (*kernel_syscall)(long, ...);

static int kernel_bpf(int cmd, union bpf_attr *attr)
{
    return kernel_syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s OBJ BINARY\n", argv[0]);
        return 2;
    }
    void *libc = dlopen("libc.so.6", RTLD_LAZY);
    kernel_syscall = libc ? dlsym(libc, "syscall") : NULL;
    if (!kernel_syscall) {
        fprintf(stderr, "no syscall in libc\n");
        return 1;
    }
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = 1;
    int runs = kernel_bpf(BPF_MAP_CREATE, &attr);
    if (runs < 0) {
        perror("kernel map");
        return 1;
    }
    // r1 = runs map; *(u32 *)(r10 - 4) = 0; r2 = r10 - 4; r0 = lookup; if r0: *r0 += 1 (atomic);
    // return 7.
    struct bpf_insn insns[] = {
        { .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = 1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = runs },
        { 0 },
        { .code = BPF_ST | BPF_W | BPF_MEM, .dst_reg = 10, .off = -4, .imm = 0 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = 2, .src_reg = 10 },
        { .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = 2, .imm = -4 },
        { .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_map_lookup_elem },
        { .code = BPF_JMP | BPF_JEQ | BPF_K, .dst_reg = 0, .off = 2, .imm = 0 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 1, .imm = 1 },
        { .code = BPF_STX | BPF_DW | BPF_ATOMIC, .dst_reg = 0, .src_reg = 1, .imm = BPF_ADD },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 7 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_RAW_TRACEPOINT;
    attr.insn_cnt = sizeof(insns) / sizeof(insns[0]);
    attr.insns = (unsigned long)insns;
    attr.license = (unsigned long)"GPL";
    int target = kernel_bpf(BPF_PROG_LOAD, &attr);
    if (target < 0) {
        perror("kernel program");
        return 1;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    __u32 zero = 0;
    if (bpf_map_update_elem(bpf_object__find_map_fd_by_name(obj, "targets"), &zero, &target, 0)) {
        perror("targets[0] = kernel program");
        return 1;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(obj, "add_entry");
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = "add");
    if (!prog || !bpf_program__attach_uprobe_opts(prog, -1, argv[2], 0, &opts)) {
        fprintf(stderr, "cannot attach add_entry to %s:add\n", argv[2]);
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    int stats = bpf_object__find_map_fd_by_name(obj, "stats");
    for (__u32 k = 0; k < 2; k++) {
        __u64 v = 0;
        bpf_map_lookup_elem(stats, &k, &v);
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    __u64 n = 0;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = runs;
    attr.key = (unsigned long)&zero;
    attr.value = (unsigned long)&n;
    kernel_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
    printf("kernel runs = %llu\n", (unsigned long long)n);
    return 0;
}
