// A libbpf event consumer as people write them: loads an object, attaches its
// `uretprobe/FUNC` program to FUNC of BINARY, says "attached", waits for a line on stdin, then
// polls the `lines` map until COUNT records arrived and prints them. A RINGBUF map is read
// with ring_buffer__new / ring_buffer__poll (mmap of the ring, epoll on the map fd), a
// PERF_EVENT_ARRAY with perf_buffer__new / perf_buffer__poll (a perf event per CPU, each
// mmapped and put in the map).
// Build: cc -O2 ring_lines.c -lbpf -o ring_lines
// Usage: ring_lines OBJ BINARY COUNT
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct line {
    unsigned pid;
    char text[60];
};

static int seen;

static int on_line(void *ctx, void *data, size_t size)
{
    const struct line *l = data;
    printf("%.60s\n", l->text);
    seen++;
    return 0;
}

static void on_sample(void *ctx, int cpu, void *data, __u32 size)
{
    on_line(ctx, data, size);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s OBJ BINARY COUNT\n", argv[0]);
        return 2;
    }
    int want = atoi(argv[3]);
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *prog = bpf_object__next_program(obj, NULL);
    const char *func = strchr(bpf_program__section_name(prog), '/') + 1;
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = func, .retprobe = true);
    struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, -1, argv[2], 0, &opts);
    if (!link) {
        fprintf(stderr, "cannot attach to %s:%s\n", argv[2], func);
        return 1;
    }
    struct bpf_map *map = bpf_object__find_map_by_name(obj, "lines");
    struct ring_buffer *rb = NULL;
    struct perf_buffer *pb = NULL;
    if (bpf_map__type(map) == BPF_MAP_TYPE_RINGBUF)
        rb = ring_buffer__new(bpf_map__fd(map), on_line, NULL, NULL);
    else
        pb = perf_buffer__new(bpf_map__fd(map), 16, on_sample, NULL, NULL, NULL);
    if (!rb && !pb) {
        fprintf(stderr, "cannot open the event buffer\n");
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    char go[16];
    if (!fgets(go, sizeof go, stdin))
        go[0] = 0;
    // Until COUNT records came, for at most 10 s.
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        if ((rb ? ring_buffer__poll(rb, 100) : perf_buffer__poll(pb, 100)) < 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (seen < want && now.tv_sec - start.tv_sec < 10);
    printf("%d lines\n", seen);
    ring_buffer__free(rb);
    perf_buffer__free(pb);
    bpf_link__destroy(link);
    bpf_object__close(obj);
    return seen >= want ? 0 : 1;
}
