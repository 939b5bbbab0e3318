// A libbpf loader that reads a GPU ring buffer the way bpftime's GPU examples do: it loads and
// attaches an object, says "attached N", waits for a line on stdin, then finds
// bpftime_syscall_server__poll_gpu_ringbuf_map with dlsym (the syscall server defines it) and
// polls map MAP with it, printing `MAP: N records of B bytes, first u32 sum S`.
// Build: cc -O2 gpu_ring_poll.c -lbpf -ldl -o gpu_ring_poll
// Usage: gpu_ring_poll OBJ MAP
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

struct stats {
    unsigned long records, first_u32_sum;
    uint64_t size;
};

static void on_record(const void *data, uint64_t size, void *ctx)
{
    struct stats *s = ctx;
    s->records++;
    s->size = size;
    if (size >= 4)
        s->first_u32_sum += *(const uint32_t *)data;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s OBJ MAP\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_map *map = bpf_object__find_map_by_name(obj, argv[2]);
    if (!map) {
        fprintf(stderr, "no map %s\n", argv[2]);
        return 1;
    }
    struct bpf_program *prog;
    int links = 0;
    bpf_object__for_each_program(prog, obj)
    {
        if (!bpf_program__attach(prog)) {
            fprintf(stderr, "cannot attach %s: errno %d\n", bpf_program__name(prog), errno);
            return 1;
        }
        links++;
    }
    printf("attached %d\n", links);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    int (*poll)(int, void *, void (*)(const void *, uint64_t, void *)) = dlsym(RTLD_DEFAULT, "bpftime_syscall_server__poll_gpu_ringbuf_map");
    if (!poll) {
        fprintf(stderr, "bpftime_syscall_server__poll_gpu_ringbuf_map: not under bpftime\n");
        return 1;
    }
    struct stats s = { 0 };
    int err = poll(bpf_map__fd(map), &s, on_record);
    if (err < 0) {
        fprintf(stderr, "poll: %d\n", err);
        return 1;
    }
    printf("%s: %lu records of %llu bytes, first u32 sum %lu\n", argv[2], s.records, (unsigned long long)s.size, s.first_u32_sum);
    bpf_object__close(obj);
    return 0;
}
