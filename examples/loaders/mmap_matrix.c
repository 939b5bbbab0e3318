// mmap(2)s maps' fds the ways a loader may (ring buffers' consumer and producer pages, arrays
// made with and without BPF_F_MMAPABLE, frozen ones, maps that cannot be mapped), and prints
// what each gave, to compare with the kernel. Build: cc mmap_matrix.c -o mmap_matrix
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int create(__u32 type, __u32 key, __u32 value, __u32 max, __u32 flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type, a.key_size = key, a.value_size = value, a.max_entries = max, a.map_flags = flags;
    return syscall(__NR_bpf, BPF_MAP_CREATE, &a, sizeof(a));
}

static void attempt(const char *what, int fd, size_t len, int prot, int flags, off_t off)
{
    void *p = mmap(NULL, len, prot, flags, fd, off);
    printf("%s: %s\n", what, p != MAP_FAILED ? "ok" : strerror(errno));
    if (p != MAP_FAILED)
        munmap(p, len);
}

int main(void)
{
    long page = sysconf(_SC_PAGESIZE);
    int ring = create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4 * page, 0);
    attempt("ring consumer page, read-write", ring, page, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    attempt("ring producer and data, read-only", ring, page + 8 * page, PROT_READ, MAP_SHARED, page);
    attempt("ring producer, read-write", ring, page, PROT_READ | PROT_WRITE, MAP_SHARED, page);
    attempt("ring consumer, private", ring, page, PROT_READ, MAP_PRIVATE, 0);
    attempt("ring past its end", ring, page, PROT_READ, MAP_SHARED, 64 * page);
    int array = create(BPF_MAP_TYPE_ARRAY, 4, 8, 16, BPF_F_MMAPABLE);
    attempt("mmapable array, read-write", array, page, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    attempt("mmapable array, two pages", array, 2 * page, PROT_READ, MAP_SHARED, 0);
    attempt("mmapable array, private", array, page, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0);
    int plain = create(BPF_MAP_TYPE_ARRAY, 4, 8, 16, 0);
    attempt("plain array", plain, page, PROT_READ, MAP_SHARED, 0);
    int hash = create(BPF_MAP_TYPE_HASH, 4, 8, 16, 0);
    attempt("hash", hash, page, PROT_READ, MAP_SHARED, 0);
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = array;
    syscall(__NR_bpf, BPF_MAP_FREEZE, &a, sizeof(a));
    attempt("frozen array, read-write", array, page, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    attempt("frozen array, read-only", array, page, PROT_READ, MAP_SHARED, 0);
    return 0;
}
