// Asks BPF_OBJ_GET_INFO_BY_FD about maps of several types and a program, with info buffers
// of several sizes, and prints the fields whose values mean the same on any kernel (not ids,
// addresses or times), to compare with the kernel. Build: cc obj_info_matrix.c -o ...
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static long info(int fd, void *buf, __u32 *len)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd;
    a.info.info_len = *len;
    a.info.info = (unsigned long)buf;
    long r = sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a);
    *len = a.info.info_len;
    return r;
}

// /proc/self/fdinfo/FD, as bpftool reads it for `memlock` and `frozen`: every line but those
// whose values differ between runs or kernels (the file's, the ids, the verifier's count),
// and a map's memlock only as nonzero (each kernel counts a map's memory its own way).
static void print_fdinfo(const char *what, int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("%s fdinfo: %s\n", what, strerror(errno));
        return;
    }
    while (fgets(line, sizeof(line), f)) {
        static const char *skip[] = { "pos:", "flags:", "mnt_id:", "ino:", "map_id:", "prog_id:", "verified_insns:" };
        int skipped = 0;
        for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
            skipped |= strncmp(line, skip[i], strlen(skip[i])) == 0;
        if (skipped)
            continue;
        if (strncmp(what, "map", 3) == 0 && strncmp(line, "memlock:", 8) == 0)
            snprintf(line, sizeof(line), "memlock>0:\t%d\n", atol(line + 8) > 0);
        printf("%s fdinfo: %s", what, line);
    }
    fclose(f);
}

int main(void)
{
    struct { __u32 type, key, value, max, flags; const char *name; } maps[] = {
        { BPF_MAP_TYPE_HASH, 4, 8, 16, BPF_F_NO_PREALLOC, "a_hash" },
        { BPF_MAP_TYPE_ARRAY, 4, 12, 3, BPF_F_MMAPABLE, "an_array" },
        { BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 2, 0, "per_cpu" },
        { BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0, "ring" },
        { BPF_MAP_TYPE_QUEUE, 0, 4, 8, 0, "queue" },
        { BPF_MAP_TYPE_LRU_HASH, 8, 16, 32, 0, "lru" },
    };
    for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.map_type = maps[i].type, a.key_size = maps[i].key, a.value_size = maps[i].value, a.max_entries = maps[i].max, a.map_flags = maps[i].flags;
        strcpy(a.map_name, maps[i].name);
        int fd = sys_bpf(BPF_MAP_CREATE, &a);
        struct bpf_map_info m;
        memset(&m, 0xff, sizeof(m));
        __u32 len = sizeof(m);
        long r = info(fd, &m, &len);
        printf("map %s: %s len %u type %u key %u value %u max %u flags %#x name %s id>0 %d\n", maps[i].name, r == 0 ? "ok" : strerror(errno), len, m.type,
               m.key_size, m.value_size, m.max_entries, m.map_flags, m.name, m.id > 0);
        // A shorter buffer gets the fields that fit; a longer one, zeroes past the struct.
        unsigned char small[8], big[sizeof(m) + 16];
        memset(big, 0xaa, sizeof(big));
        __u32 slen = sizeof(small), blen = sizeof(big);
        long rs = info(fd, small, &slen), rb = info(fd, big, &blen);
        printf("  short buffer: %s len %u type %u; long buffer: %s len %u\n", rs == 0 ? "ok" : strerror(errno), slen, *(__u32 *)small,
               rb == 0 ? "ok" : strerror(errno), blen);
        close(fd);
    }
    struct bpf_insn insns[] = { { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 7 }, { .code = BPF_JMP | BPF_EXIT } };
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_KPROBE, a.insns = (unsigned long)insns, a.insn_cnt = 2, a.license = (unsigned long)"GPL";
    strcpy(a.prog_name, "seven");
    int prog = sys_bpf(BPF_PROG_LOAD, &a);
    struct bpf_prog_info p;
    memset(&p, 0, sizeof(p));
    __u32 len = sizeof(p);
    long r = info(prog, &p, &len);
    printf("prog: %s len %u type %u name %s tag %02x%02x%02x%02x%02x%02x%02x%02x xlated %u gpl %u nr_map_ids %u\n", r == 0 ? "ok" : strerror(errno), len,
           p.type, p.name, p.tag[0], p.tag[1], p.tag[2], p.tag[3], p.tag[4], p.tag[5], p.tag[6], p.tag[7], p.xlated_prog_len, p.gpl_compatible,
           p.nr_map_ids);
    // Its machine code: a length, one function whose length that is, an address, and the
    // bytes, as many as the buffer holds (one byte for a one-byte buffer).
    {
        unsigned char code[4096], one[2] = { 0xaa, 0xaa };
        __u64 ksym = 0;
        __u32 func_len = 0, total = p.jited_prog_len;
        memset(code, 0, sizeof(code));
        memset(&p, 0, sizeof(p));
        p.jited_prog_len = sizeof(code), p.jited_prog_insns = (unsigned long)code;
        p.nr_jited_ksyms = 1, p.jited_ksyms = (unsigned long)&ksym;
        p.nr_jited_func_lens = 1, p.jited_func_lens = (unsigned long)&func_len;
        len = sizeof(p);
        r = info(prog, &p, &len);
        int copied = 0;
        for (__u32 i = 0; i < total && i < sizeof(code); i++)
            copied |= code[i] != 0;
        printf("prog code: %s len>0 %d ksyms %u func lens %u; function's length is the length %d, an address %d, code copied %d, insns pointer kept %d\n",
               r == 0 ? "ok" : strerror(errno), total > 0, p.nr_jited_ksyms, p.nr_jited_func_lens, func_len == total, ksym != 0, copied,
               p.jited_prog_insns == (unsigned long)code);
        memset(&p, 0, sizeof(p));
        p.jited_prog_len = 1, p.jited_prog_insns = (unsigned long)one;
        len = sizeof(p);
        r = info(prog, &p, &len);
        printf("prog code, a one-byte buffer: %s first byte copied %d second untouched %d length %d\n", r == 0 ? "ok" : strerror(errno), one[0] == code[0],
               one[1] == 0xaa, p.jited_prog_len == total);
    }
    // A program naming a map: its tag leaves out the map's fd.
    union bpf_attr ma;
    memset(&ma, 0, sizeof(ma));
    ma.map_type = BPF_MAP_TYPE_ARRAY, ma.key_size = 4, ma.value_size = 8, ma.max_entries = 1;
    int map = sys_bpf(BPF_MAP_CREATE, &ma);
    struct bpf_insn with_map[] = {
        { .code = BPF_LD | BPF_IMM | BPF_DW, .dst_reg = 1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map },
        { 0 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    a.insns = (unsigned long)with_map, a.insn_cnt = 4;
    strcpy(a.prog_name, "with_map");
    int prog2 = sys_bpf(BPF_PROG_LOAD, &a);
    memset(&p, 0, sizeof(p));
    len = sizeof(p);
    r = info(prog2, &p, &len);
    printf("prog with a map: %s tag %02x%02x%02x%02x%02x%02x%02x%02x nr_map_ids %u\n", r == 0 ? "ok" : strerror(errno), p.tag[0], p.tag[1], p.tag[2], p.tag[3],
           p.tag[4], p.tag[5], p.tag[6], p.tag[7], p.nr_map_ids);
    print_fdinfo("prog", prog2);
    print_fdinfo("map", map);
    union bpf_attr fa;
    memset(&fa, 0, sizeof(fa));
    fa.map_fd = map;
    printf("freeze: %s\n", sys_bpf(BPF_MAP_FREEZE, &fa) == 0 ? "ok" : strerror(errno));
    print_fdinfo("map, frozen", map);
    __u32 nolen = 0;
    printf("no buffer: %s\n", info(prog, NULL, &nolen) == 0 ? "ok" : strerror(errno));
    printf("not an object: %s\n", info(0, &p, &len) == 0 ? "ok" : strerror(errno));
    len = sizeof(p);
    printf("a closed fd: %s\n", info(999, &p, &len) == 0 ? "ok" : strerror(errno));
    // The kernel's BTF (id 1): its name in a buffer that holds it and in one that does not
    // (struct bpf_btf_info by offset: name pointer at 16, its length at 24, kernel_btf at 28).
    union bpf_attr b;
    memset(&b, 0, sizeof(b));
    b.btf_id = 1;
    int vmlinux = sys_bpf(BPF_BTF_GET_FD_BY_ID, &b);
    for (unsigned size = 16; size >= 4; size /= 4) {
        __u64 btf_info[4] = { 0 };
        char name[16] = "";
        btf_info[2] = (unsigned long)name, btf_info[3] = size;
        len = sizeof(btf_info);
        r = info(vmlinux, btf_info, &len);
        printf("kernel BTF, a %u-byte name buffer: %s, name '%s', name length %u, kernel %u\n", size, r == 0 ? "ok" : strerror(errno), name,
               (unsigned)btf_info[3], (unsigned)(btf_info[3] >> 32));
    }
    static char page_and_more[8192];
    len = sizeof(page_and_more);
    printf("a buffer longer than a page: %s\n", info(prog, page_and_more, &len) == 0 ? "ok" : strerror(errno));
    return 0;
}
