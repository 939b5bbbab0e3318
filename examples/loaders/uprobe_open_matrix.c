// Opens uprobe perf events (the uprobe PMU, as libbpf does) with good and bad attributes and
// attaches programs to them, printing what each attempt gave, to compare with the kernel:
// paths that do not exist, are not regular files or are relative, offsets past the end,
// misaligned semaphore offsets, processes that do not exist, and attaching programs of the
// wrong type or fds that are not programs; then BPF_TASK_FD_QUERY (what `bpftool perf` asks) on
// the probe and on other fds. Usage: uprobe_open_matrix (from any directory)
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "kernel_version.h"
#include <unistd.h>

static int uprobe_type(void)
{
    FILE *f = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
    int t = -1;
    if (f) {
        if (fscanf(f, "%d", &t) != 1)
            t = -1;
        fclose(f);
    }
    return t;
}

// The file offset of `addr` in this executable, from /proc/self/maps.
static unsigned long file_offset(unsigned long addr)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long start, end, off, found = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "%lx-%lx %*s %lx", &start, &end, &off) == 3 && addr >= start && addr < end)
            found = addr - start + off;
    if (f)
        fclose(f);
    return found;
}

__attribute__((noinline)) int probed(int x)
{
    asm volatile("");
    return x + 1;
}

static const char *result(long r)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "%s", r >= 0 ? "ok" : strerror(errno));
    return buf;
}

static int open_uprobe(const char *path, unsigned long offset, unsigned long config, int pid, int cpu, unsigned size)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof(a));
    a.size = size;
    a.type = uprobe_type();
    a.config = config;
    a.config1 = (unsigned long)path;
    a.config2 = offset;
    return syscall(__NR_perf_event_open, &a, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
}

static void attempt(const char *what, const char *path, unsigned long offset, unsigned long config, int pid, int cpu, unsigned size)
{
    int fd = open_uprobe(path, offset, config, pid, cpu, size);
    printf("%s: %s\n", what, result(fd));
    if (fd >= 0)
        close(fd);
}

// BPF_TASK_FD_QUERY of fd `fd` of process `pid` with a name buffer of `len` bytes: the call's
// result, the fd type, whether the name is `name` (cut to the buffer), and the offset.
static void query(const char *what, int pid, int fd, unsigned flags, unsigned len, const char *name, unsigned long offset)
{
    char buf[4096] = "unchanged";
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.task_fd_query.pid = pid, a.task_fd_query.fd = fd, a.task_fd_query.flags = flags;
    a.task_fd_query.buf_len = len, a.task_fd_query.buf = (unsigned long)buf;
    long r = syscall(__NR_bpf, BPF_TASK_FD_QUERY, &a, sizeof(a));
    const char *err = r == 0 ? "ok" : errno == 524 ? "ENOTSUPP" : strerror(errno);
    if (r != 0 && errno != ENOSPC) {
        printf("%s: %s\n", what, err);
        return;
    }
    int same = len ? strncmp(buf, name, len - 1) == 0 && strlen(buf) == (strlen(name) < len ? strlen(name) : len - 1) : 1;
    printf("%s: %s, type %u, name %s (length %s), offset %s, prog %s\n", what, err, a.task_fd_query.fd_type, same ? "as opened" : buf,
           a.task_fd_query.buf_len == strlen(name) ? "right" : "wrong", a.task_fd_query.probe_offset == offset ? "right" : "wrong",
           a.task_fd_query.prog_id ? "given" : "none");
}

static int load(int type)
{
    struct bpf_insn insns[] = { { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 }, { .code = BPF_JMP | BPF_EXIT } };
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = type;
    a.insns = (unsigned long)insns;
    a.insn_cnt = 2;
    a.license = (unsigned long)"GPL";
    return syscall(__NR_bpf, BPF_PROG_LOAD, &a, sizeof(a));
}

int main(void)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return 1;
    exe[n] = 0;
    unsigned long off = file_offset((unsigned long)probed);
    struct stat st;
    stat(exe, &st);
    int self = getpid();
    unsigned sz = sizeof(struct perf_event_attr);
    attempt("own function, this process", exe, off, 0, self, -1, sz);
    attempt("own function, every process", exe, off, 0, -1, 0, sz);
    attempt("return probe", exe, off, 1, self, -1, sz);
    attempt("no such file", "/nonexistent/bpftime/file", off, 0, self, -1, sz);
    attempt("empty path", "", off, 0, self, -1, sz);
    attempt("no path", NULL, off, 0, self, -1, sz);
    attempt("a directory", "/tmp", 0, 0, self, -1, sz);
    attempt("past the end of the file", exe, st.st_size + 4096, 0, self, -1, sz);
    attempt("odd semaphore offset", exe, off, 1ul << 32, self, -1, sz);
    attempt("even semaphore offset", exe, off, 2ul << 32, self, -1, sz);
    attempt("no such process", exe, off, 0, 0x3ffffff0, -1, sz);
    attempt("no process and no cpu", exe, off, 0, -1, -1, sz);
    attempt("attr size too small", exe, off, 0, self, -1, 32);
    // A relative path: to this executable from its directory.
    char dir[4096], *slash;
    strcpy(dir, exe);
    slash = strrchr(dir, '/');
    *slash = 0;
    if (chdir(dir) == 0) {
        char rel[4200];
        snprintf(rel, sizeof(rel), "./%s", slash + 1);
        int fd = open_uprobe(rel, off, 0, self, -1, sz);
        printf("relative path: %s\n", result(fd));
        // It names the file it named when opened, wherever we go next.
        if (chdir("/") == 0 && fd >= 0) {
            int prog = load(BPF_PROG_TYPE_KPROBE);
            long r = ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog);
            int before = probed(1);
            printf("relative path, attached after chdir: %s %d\n", result(r), before);
            close(prog);
        }
        if (fd >= 0)
            close(fd);
    }
    int fd = open_uprobe(exe, off, 0, self, -1, sz);
    int socket_prog = load(BPF_PROG_TYPE_SOCKET_FILTER);
    int map = syscall(__NR_bpf, BPF_MAP_CREATE, &(union bpf_attr){ .map_type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 1 }, sizeof(union bpf_attr));
    int file = open("/dev/null", O_RDONLY);
    printf("attach a socket filter: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, socket_prog)));
    printf("attach a map fd: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, map)));
    printf("attach a file fd: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, file)));
    printf("attach a closed fd: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, 999)));
    int prog = load(BPF_PROG_TYPE_KPROBE);
    printf("attach a kprobe program: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog)));
    printf("attach it again: %s\n", result(ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog)));
    printf("enable: %s\n", result(ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)));
    query("query the probe", self, fd, 0, sizeof(exe), exe, off);
    query("query the probe, a short name buffer", self, fd, 0, 8, exe, off);
    query("query the probe, no name buffer", self, fd, 0, 0, exe, off);
    query("query with flags", self, fd, 1, sizeof(exe), exe, off);
    int ret = open_uprobe(exe, off, 1, self, -1, sz);
    ioctl(ret, PERF_EVENT_IOC_SET_BPF, prog);
    query("query a return probe", self, ret, 0, sizeof(exe), exe, off);
    int bare = open_uprobe(exe, off, 0, self, -1, sz);
    query("query a probe without a program", self, bare, 0, sizeof(exe), exe, off);
    query("query a file", self, file, 0, sizeof(exe), exe, off);
    query("query a closed fd", self, 999, 0, sizeof(exe), exe, off);
    query("query a process that does not exist", 0x3ffffff0, fd, 0, sizeof(exe), exe, off);
    // A perf link (BPF_LINK_CREATE) on a return probe, with a cookie, and its info: struct
    // bpf_link_info by offset (type at 0; perf_event: kind at 16, file name pointer at 24,
    // its length at 32, offset at 36, cookie at 40).
    int event = open_uprobe(exe, off, 1, self, -1, sz);
    union bpf_attr la;
    memset(&la, 0, sizeof(la));
    la.link_create.prog_fd = prog, la.link_create.target_fd = event, la.link_create.attach_type = BPF_PERF_EVENT;
    la.link_create.perf_event.bpf_cookie = 77;
    int link = syscall(__NR_bpf, BPF_LINK_CREATE, &la, sizeof(la));
    printf("perf link on a return probe: %s\n", result(link));
    __u64 info[8] = { 0 };
    char name[4096] = "";
    info[3] = (unsigned long)name, info[4] = sizeof(name);
    memset(&la, 0, sizeof(la));
    la.info.bpf_fd = link, la.info.info_len = sizeof(info), la.info.info = (unsigned long)info;
    long r = syscall(__NR_bpf, BPF_OBJ_GET_INFO_BY_FD, &la, sizeof(la));
    // (What the event is, since 6.6; its cookie since 6.9; the name's length right since 6.12.)
    if (kernel_at_least(6, 12))
        printf("perf link info: %s, type %u, kind %u, name %s, name length %s, offset %s, cookie %llu\n", result(r), (unsigned)info[0],
               (unsigned)info[2], strcmp(name, exe) == 0 ? "as opened" : name, (__u32)info[4] == strlen(exe) + 1 ? "right" : "wrong",
               (__u32)(info[4] >> 32) == off ? "right" : "wrong", (unsigned long long)info[5]);
    else
        printf("perf link info: %s, type %u\n", result(r), (unsigned)info[0]);
    query("query the perf link's event", self, event, 0, sizeof(exe), exe, off);
    query("query the perf link", self, link, 0, sizeof(exe), exe, off);
    return 0;
}
