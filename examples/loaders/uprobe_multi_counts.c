// A uprobe_multi loader through bpf(2) itself (libbpf 1.1 predates uprobe.multi): two
// kprobe-type programs loaded for BPF_TRACE_UPROBE_MULTI, one linked to every OFFSET of BINARY
// as entry probes, one as return probes (BPF_F_UPROBE_MULTI_RETURN), the cookie of offset i
// being i + 1. Each program counts its hits (slot 0: entries, 1: returns) and sums the cookies
// it sees (bpf_get_attach_cookie; slot 2: entries, 3: returns). Before, a link with an odd
// semaphore offset (refused); after, the entry link opened again by its id and that fd closed
// (the link stays). Says "attached 2", waits for a line on stdin, prints `stats[K] = V`.
// Runs the same on the kernel and under bpftime.
// Build: cc uprobe_multi_counts.c -o uprobe_multi_counts
// Usage: uprobe_multi_counts BINARY OFFSET...   (offsets in hex, file offsets of functions)
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define I(c, d, s, o, i) { .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) }
// Not in older UAPI headers.
#define TRACE_UPROBE_MULTI 48
#define UPROBE_MULTI_RETURN 1

static long sys_bpf(int cmd, void *attr, unsigned size)
{
    return syscall(__NR_bpf, cmd, attr, size);
}

// Counts into slot `slot` and adds the attach cookie into slot `slot + 2`.
static int load(int map, int slot, int retprobe)
{
    struct bpf_insn insns[] = {
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_attach_cookie), // r1 is the context
        I(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0),
        I(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, slot),
        I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map), I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 1),
        I(BPF_STX | BPF_ATOMIC | BPF_DW, 0, 1, 0, BPF_ADD),
        I(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, slot + 2),
        I(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map), I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        I(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        I(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0),
        I(BPF_STX | BPF_ATOMIC | BPF_DW, 0, 7, 0, BPF_ADD),
        I(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0),
        I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_KPROBE;
    a.expected_attach_type = TRACE_UPROBE_MULTI;
    a.insns = (unsigned long)insns;
    a.insn_cnt = sizeof(insns) / sizeof(insns[0]);
    a.license = (unsigned long)"GPL";
    strcpy(a.prog_name, retprobe ? "multi_return" : "multi_entry");
    return sys_bpf(BPF_PROG_LOAD, &a, sizeof(a));
}

// The link_create attributes of a uprobe_multi link, as the kernel lays them out.
struct multi_attr {
    uint32_t prog_fd, target_fd, attach_type, flags;
    uint64_t path, offsets, ref_ctr_offsets, cookies;
    uint32_t cnt, multi_flags, pid;
    uint8_t rest[64];
};

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s BINARY OFFSET...\n", argv[0]);
        return 2;
    }
    union bpf_attr m;
    memset(&m, 0, sizeof(m));
    m.map_type = BPF_MAP_TYPE_ARRAY;
    m.key_size = 4;
    m.value_size = 8;
    m.max_entries = 4;
    int map = sys_bpf(BPF_MAP_CREATE, &m, sizeof(m));
    if (map < 0) {
        fprintf(stderr, "map: %s\n", strerror(errno));
        return 1;
    }
    int n = argc - 2 < 64 ? argc - 2 : 64;
    uint64_t offsets[64], cookies[64];
    for (int i = 0; i < n; i++) {
        offsets[i] = strtoull(argv[i + 2], NULL, 16);
        cookies[i] = i + 1;
    }
    int entry_link = -1;
    for (int ret = 0; ret < 2; ret++) {
        int prog = load(map, ret, ret);
        if (prog < 0) {
            fprintf(stderr, "load: %s\n", strerror(errno));
            return 1;
        }
        struct multi_attr l;
        memset(&l, 0, sizeof(l));
        l.prog_fd = prog;
        l.attach_type = TRACE_UPROBE_MULTI;
        l.path = (unsigned long)argv[1];
        l.offsets = (unsigned long)offsets;
        l.cookies = (unsigned long)cookies;
        l.cnt = n;
        l.multi_flags = ret ? UPROBE_MULTI_RETURN : 0;
        uint64_t odd[64];
        for (int i = 0; i < n; i++)
            odd[i] = 1;
        l.ref_ctr_offsets = (unsigned long)odd;
        if (sys_bpf(BPF_LINK_CREATE, &l, sizeof(l)) >= 0 || errno != EINVAL) {
            fprintf(stderr, "a link with an odd semaphore offset: %s\n", strerror(errno));
            return 1;
        }
        l.ref_ctr_offsets = 0;
        int link = sys_bpf(BPF_LINK_CREATE, &l, sizeof(l));
        if (link < 0) {
            fprintf(stderr, "link: %s\n", strerror(errno));
            return 1;
        }
        if (!ret)
            entry_link = link;
    }
    // The entry link again, by its id; closing that fd leaves the link attached.
    struct bpf_link_info info;
    memset(&info, 0, sizeof(info));
    union bpf_attr q;
    memset(&q, 0, sizeof(q));
    q.info.bpf_fd = entry_link;
    q.info.info_len = sizeof(info);
    q.info.info = (unsigned long)&info;
    if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &q, sizeof(q)) < 0 || info.type != 12) {
        fprintf(stderr, "link info: %s, type %u\n", strerror(errno), info.type);
        return 1;
    }
    memset(&q, 0, sizeof(q));
    q.link_id = info.id;
    int again = sys_bpf(BPF_LINK_GET_FD_BY_ID, &q, sizeof(q));
    if (again < 0) {
        fprintf(stderr, "link by id: %s\n", strerror(errno));
        return 1;
    }
    close(again);
    printf("attached 2\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    for (uint32_t k = 0; k < 4; k++) {
        uint64_t v = 0;
        union bpf_attr e;
        memset(&e, 0, sizeof(e));
        e.map_fd = map;
        e.key = (unsigned long)&k;
        e.value = (unsigned long)&v;
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &e, sizeof(e));
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    return 0;
}
