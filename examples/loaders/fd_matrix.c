// Copies and closes of bpf fds, made every way a loader makes them, printing whether the
// object is still there through the copy (not ids or fd numbers, which differ), to compare
// with the kernel: a map fd moved onto a placeholder with syscall(__NR_dup3) as libbpf 1.4+
// does, fcntl(F_DUPFD_CLOEXEC) as libbpf's ensure_good_fd does, dup2 of an fd onto itself,
// syscall(__NR_dup), and a link that another process opens by id and closes (as
// `bpftool link show` does), which stays attached; a map frozen here, which another process
// cannot update either.
// Build: cc fd_matrix.c -o fd_matrix    Run: ./fd_matrix
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long call(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static int new_map(void)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = BPF_MAP_TYPE_ARRAY, a.key_size = 4, a.value_size = 4, a.max_entries = 1;
    return call(BPF_MAP_CREATE, &a);
}

// Whether a lookup through `fd` works.
static void lookup(const char *what, int fd)
{
    __u32 key = 0, value;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = fd, a.key = (unsigned long)&key, a.value = (unsigned long)&value;
    long r = call(BPF_MAP_LOOKUP_ELEM, &a);
    printf("%s: %s\n", what, r == 0 ? "ok" : strerror(errno));
}

static __u32 link_id(int fd)
{
    struct bpf_link_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd, a.info.info_len = sizeof(info), a.info.info = (unsigned long)&info;
    return call(BPF_OBJ_GET_INFO_BY_FD, &a) == 0 ? info.id : 0;
}

// Under bpftime the process that opens the link must be a loader too (the programs a loader
// starts get the agent instead): the library serving this one is preloaded into it.
static void preload_our_server(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    while (maps && fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "libbpftime_syscall_server")) {
            path[strcspn(path, "\n")] = 0;
            setenv("LD_PRELOAD", path, 1);
            break;
        }
    }
    if (maps)
        fclose(maps);
}

// Runs this program again as another loader with `what` and `id`; its exit status.
static int in_another_process(const char *what, __u32 id, char *self)
{
    char arg[16];
    snprintf(arg, sizeof arg, "%u", id);
    pid_t child = fork();
    if (child == 0) {
        preload_our_server();
        execl("/proc/self/exe", self, what, arg, (char *)0);
        _exit(127);
    }
    if (child < 0)
        return -1;
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static long link_by_id(__u32 id)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.link_id = id;
    return call(BPF_LINK_GET_FD_BY_ID, &a);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "update-map") == 0) {
        // The other process: opens the map by id and updates it; exits 0, or 1 with EPERM.
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.map_id = (__u32)strtoul(argv[2], 0, 10);
        long fd = call(BPF_MAP_GET_FD_BY_ID, &a);
        __u32 key = 0, value = 7;
        memset(&a, 0, sizeof(a));
        a.map_fd = fd, a.key = (unsigned long)&key, a.value = (unsigned long)&value;
        if (call(BPF_MAP_UPDATE_ELEM, &a) == 0)
            return 0;
        return errno == EPERM ? 1 : 2;
    }
    if (argc == 3 && strcmp(argv[1], "close-link") == 0) {
        // The other process: opens the link by id, closes it, exits.
        long fd = link_by_id((__u32)strtoul(argv[2], 0, 10));
        if (fd >= 0)
            close(fd);
        return fd >= 0 ? 0 : 1;
    }
    int map = new_map();
    int placeholder = memfd_create("placeholder", MFD_CLOEXEC);
    long moved = syscall(__NR_dup3, map, placeholder, O_CLOEXEC);
    printf("syscall(__NR_dup3) onto a placeholder: %s\n", moved == placeholder ? "ok" : strerror(errno));
    close(map);
    lookup("map through the placeholder, its first fd closed", placeholder);

    map = new_map();
    int copy = fcntl(map, F_DUPFD_CLOEXEC, 3);
    close(map);
    lookup("map through fcntl(F_DUPFD_CLOEXEC), its first fd closed", copy);

    map = new_map();
    printf("dup2 of a map fd onto itself: %s\n", dup2(map, map) == map ? "ok" : strerror(errno));
    lookup("map after dup2 onto itself", map);
    printf("dup3 of a map fd onto itself: %s\n", dup3(map, map, 0) == map ? "ok" : strerror(errno));
    lookup("map after dup3 onto itself", map);
    long dup_fd = syscall(__NR_dup, map);
    close(map);
    lookup("map through syscall(__NR_dup), its first fd closed", (int)dup_fd);

    // A raw tracepoint program attached to sys_enter (a link), opened by id and closed by
    // another process.
    struct bpf_insn insns[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_RAW_TRACEPOINT, a.insn_cnt = 2, a.insns = (unsigned long)insns;
    a.license = (unsigned long)"GPL";
    int prog = call(BPF_PROG_LOAD, &a);
    memset(&a, 0, sizeof(a));
    a.raw_tracepoint.name = (unsigned long)"sys_enter", a.raw_tracepoint.prog_fd = prog;
    int link = call(BPF_RAW_TRACEPOINT_OPEN, &a);
    __u32 id = link_id(link);
    printf("a raw tracepoint link: %s\n", link >= 0 && id ? "ok" : strerror(errno));
    printf("another process opened the link by id and closed it: %s\n", in_another_process("close-link", id, argv[0]) == 0 ? "ok" : "failed");
    long again = link_by_id(id);
    printf("the link by id after that: %s\n", again >= 0 ? "ok" : strerror(errno));
    // Its info: the raw tracepoint's type and name (struct bpf_link_info, by offset: the
    // name pointer at 16, its length at 24), the name cut short in a small buffer.
    for (unsigned len = 64; len >= 4; len /= 16) {
        __u64 info[8] = { 0 };
        char name[64] = "";
        info[2] = (unsigned long)name;
        info[3] = len;
        memset(&a, 0, sizeof(a));
        a.info.bpf_fd = link, a.info.info_len = sizeof(info), a.info.info = (unsigned long)info;
        long r = call(BPF_OBJ_GET_INFO_BY_FD, &a);
        printf("raw tracepoint link info, a %u-byte name buffer: %s, type %u, name '%s', name length %u\n", len, r == 0 ? "ok" : strerror(errno),
               (unsigned)info[0], name, (unsigned)info[3]);
    }
    memset(&a, 0, sizeof(a));
    a.link_detach.link_fd = link;
    printf("detach the raw tracepoint link: %s\n", call(BPF_LINK_DETACH, &a) == 0 ? "ok" : strerror(errno));
    a.link_detach.link_fd = prog;
    printf("detach a program fd: %s\n", call(BPF_LINK_DETACH, &a) == 0 ? "ok" : strerror(errno));
    a.link_detach.link_fd = 999;
    printf("detach a closed fd: %s\n", call(BPF_LINK_DETACH, &a) == 0 ? "ok" : strerror(errno));

    map = new_map();
    memset(&a, 0, sizeof(a));
    a.map_fd = map;
    printf("freeze a map: %s\n", call(BPF_MAP_FREEZE, &a) == 0 ? "ok" : strerror(errno));
    struct bpf_map_info info;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = map, a.info.info_len = sizeof(info), a.info.info = (unsigned long)&info;
    call(BPF_OBJ_GET_INFO_BY_FD, &a);
    int updated = in_another_process("update-map", info.id, argv[0]);
    printf("another process's update of the frozen map: %s\n", updated == 0 ? "ok" : updated == 1 ? "Operation not permitted" : "failed");
    return 0;
}
