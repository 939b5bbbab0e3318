// Who keeps a map alive, through raw bpf(2); the same answers on the kernel and under bpftime.
// Usage: map_holders fork          a loader's child, forked with copies of its fds, exits; the
//                                  loader's map is still there
//        map_holders create FILE   makes a map (value 42), writes its id to FILE, exits 2 s later
//        map_holders hold FILE     opens that map by id 1 s in, looks it up once the creator
//                                  has exited (and any grace period is over)
//        map_holders daemon FILE   makes a map, forks a child and leaves at once (_exit: no exit
//                                  handler runs); the child looks the map up 3 s later, writes
//                                  what it found to FILE, and exits
//        map_holders spawn FILE    makes a map, writes its id to FILE, starts `sleep 5` (fork,
//                                  exec: the child holds none of its fds) and waits to be killed
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *a)
{
    return syscall(SYS_bpf, cmd, a, sizeof(*a));
}

static long lookup(int fd, unsigned long *v)
{
    unsigned k = 0;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = fd;
    a.key = (unsigned long)&k;
    a.value = (unsigned long)v;
    return bpf(BPF_MAP_LOOKUP_ELEM, &a);
}

static int create(void)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_ARRAY;
    a.key_size = 4;
    a.value_size = 8;
    a.max_entries = 1;
    int fd = bpf(BPF_MAP_CREATE, &a);
    unsigned k = 0;
    unsigned long v = 42;
    memset(&a, 0, sizeof a);
    a.map_fd = fd;
    a.key = (unsigned long)&k;
    a.value = (unsigned long)&v;
    bpf(BPF_MAP_UPDATE_ELEM, &a);
    return fd;
}

// Writes the id of map `fd` to `path`.
static void write_id(const char *path, int fd)
{
    struct bpf_map_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof info);
    memset(&a, 0, sizeof a);
    a.info.bpf_fd = fd;
    a.info.info_len = sizeof info;
    a.info.info = (unsigned long)&info;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &a);
    FILE *f = fopen(path, "w");
    fprintf(f, "%u\n", info.id);
    fclose(f);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    unsigned long v = 0;
    if (strcmp(mode, "fork") == 0) {
        int fd = create();
        pid_t child = fork();
        if (child == 0)
            exit(0);
        waitpid(child, NULL, 0);
        sleep(3);
        long r = lookup(fd, &v);
        printf("after a forked child exited: lookup %ld value %lu\n", r, v);
        return 0;
    }
    if (argc != 3)
        return 2;
    if (strcmp(mode, "spawn") == 0) {
        int fd = create();
        if (fork() == 0) {
            execlp("sleep", "sleep", "5", (char *)NULL);
            _exit(127);
        }
        write_id(argv[2], fd);
        for (;;)
            pause();
    }
    if (strcmp(mode, "daemon") == 0) {
        int fd = create();
        if (fork() != 0)
            _exit(0);
        sleep(3);
        long r = lookup(fd, &v);
        FILE *f = fopen(argv[2], "w");
        fprintf(f, "a daemon after its loader left: lookup %ld value %lu\n", r, v);
        fclose(f);
        return 0;
    }
    if (strcmp(mode, "create") == 0) {
        int fd = create();
        write_id(argv[2], fd);
        sleep(2);
        return 0;
    }
    sleep(1);
    unsigned id = 0;
    FILE *f = fopen(argv[2], "r");
    if (!f || fscanf(f, "%u", &id) != 1)
        return 1;
    fclose(f);
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_id = id;
    int fd = bpf(BPF_MAP_GET_FD_BY_ID, &a);
    printf("opened by id: %s\n", fd >= 0 ? "yes" : "no");
    sleep(4);
    long r = lookup(fd, &v);
    printf("after its creator exited: lookup %ld value %lu\n", r, v);
    return 0;
}
