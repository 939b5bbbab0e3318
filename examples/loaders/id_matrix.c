// Looks objects up by id and walks the id lists through bpf(2) with good and bad arguments,
// printing what each call gave (not the ids, which are each kernel's own), to compare with
// the kernel. Build: cc id_matrix.c -o id_matrix
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long call(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static void by_id(const char *what, int cmd, __u32 id, __u32 open_flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_id = id; // the same field as prog_id and link_id
    a.open_flags = open_flags;
    long r = call(cmd, &a);
    printf("%s: %s\n", what, r >= 0 ? "ok" : strerror(errno));
    if (r >= 0)
        close(r);
}

static void next_id(const char *what, int cmd, __u32 start)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.start_id = start;
    long r = call(cmd, &a);
    printf("%s: %s\n", what, r >= 0 ? (a.next_id > start ? "ok, a later id" : "ok, not a later id") : strerror(errno));
}

static __u32 id_of(int fd)
{
    struct bpf_map_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd, a.info.info_len = sizeof(info), a.info.info = (unsigned long)&info;
    return call(BPF_OBJ_GET_INFO_BY_FD, &a) == 0 ? info.id : 0;
}

int main(void)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = BPF_MAP_TYPE_ARRAY, a.key_size = 4, a.value_size = 4, a.max_entries = 1;
    int map = call(BPF_MAP_CREATE, &a);
    __u32 id = id_of(map);
    by_id("map by its id", BPF_MAP_GET_FD_BY_ID, id, 0);
    by_id("map by its id, read-only", BPF_MAP_GET_FD_BY_ID, id, BPF_F_RDONLY);
    by_id("map by its id, both read-only and write-only", BPF_MAP_GET_FD_BY_ID, id, BPF_F_RDONLY | BPF_F_WRONLY);
    by_id("map by its id, unknown open flags", BPF_MAP_GET_FD_BY_ID, id, 1u << 20);
    by_id("map by id 0", BPF_MAP_GET_FD_BY_ID, 0, 0);
    by_id("map by an id nobody has", BPF_MAP_GET_FD_BY_ID, 0x7ffffff0, 0);
    by_id("program by an id nobody has", BPF_PROG_GET_FD_BY_ID, 0x7ffffff0, 0);
    by_id("program by the map's id, open flags", BPF_PROG_GET_FD_BY_ID, id, BPF_F_RDONLY);
    by_id("link by an id nobody has", BPF_LINK_GET_FD_BY_ID, 0x7ffffff0, 0);
    next_id("map ids after 0", BPF_MAP_GET_NEXT_ID, 0);
    next_id("map ids after the last", BPF_MAP_GET_NEXT_ID, 0xfffffff0);
    next_id("program ids after the last", BPF_PROG_GET_NEXT_ID, 0xfffffff0);
    next_id("link ids after the last", BPF_LINK_GET_NEXT_ID, 0xfffffff0);
    static char page_and_more[8192];
    long r = syscall(__NR_bpf, BPF_MAP_GET_NEXT_ID, page_and_more, sizeof(page_and_more));
    printf("an attr longer than a page: %s\n", r >= 0 ? "ok" : strerror(errno));
    return 0;
}
