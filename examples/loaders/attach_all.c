// A libbpf loader in the style of bpftime's GPU examples: opens an eBPF object, loads it,
// attaches every program where its section says (libbpf's auto-attach: `kprobe/KERNEL` opens
// a kprobe perf event for KERNEL, which on the kernel is a kernel function and under bpftime
// may be a CUDA kernel), says "attached N", waits for a line on stdin, then prints every
// entry of every hash and array map with 4-byte keys and 8-byte values as `MAP[KEY] = VALUE`,
// and of bpftime's per-GPU-thread arrays (1502: a lookup gives every thread's value, for
// BPFTIME_MAP_GPU_THREAD_COUNT threads, default 1024) as `MAP[KEY] = SUM (N threads)`, N the
// threads whose value is not 0. Ring buffers (27, and bpftime's GPU ring 1527) are read with
// libbpf's ring_buffer, perf event arrays with its perf_buffer (a perf event per CPU):
// `MAP: N records of B bytes, first u32 sum S`.
// Build: cc -O2 attach_all.c -lbpf -o attach_all
// Usage: attach_all OBJ
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static void print_map(const struct bpf_map *map)
{
    if (bpf_map__key_size(map) != 4 || bpf_map__value_size(map) != 8)
        return;
    int fd = bpf_map__fd(map);
    __u32 key, *prev = NULL;
    while (bpf_map_get_next_key(fd, prev, &key) == 0) {
        __u64 value;
        if (bpf_map_lookup_elem(fd, &key, &value) == 0)
            printf("%s[%u] = %llu\n", bpf_map__name(map), key, (unsigned long long)value);
        prev = &key;
    }
}

static void print_per_thread(const struct bpf_map *map)
{
    if (bpf_map__key_size(map) != 4 || bpf_map__value_size(map) != 8)
        return;
    const char *env = getenv("BPFTIME_MAP_GPU_THREAD_COUNT");
    unsigned long threads = env ? strtoul(env, NULL, 10) : 1024;
    __u64 *values = calloc(threads, sizeof(__u64));
    if (!values)
        return;
    for (__u32 key = 0; key < bpf_map__max_entries(map); key++) {
        if (bpf_map_lookup_elem(bpf_map__fd(map), &key, values))
            continue;
        unsigned long long sum = 0, busy = 0;
        for (unsigned long t = 0; t < threads; t++) {
            sum += values[t];
            busy += values[t] != 0;
        }
        printf("%s[%u] = %llu (%llu threads)\n", bpf_map__name(map), key, sum, busy);
    }
    free(values);
}

/// What one ring buffer delivered.
struct ring_stats {
    const char *name;
    unsigned long records, first_u32_sum;
    size_t size;
};

static int on_record(void *ctx, void *data, size_t size)
{
    struct ring_stats *s = ctx;
    s->records++;
    s->size = size;
    if (size >= 4)
        s->first_u32_sum += *(__u32 *)data;
    return 0;
}

static void on_sample(void *ctx, int cpu, void *data, __u32 size)
{
    (void)cpu;
    on_record(ctx, data, size);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OBJ\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj)) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 1;
    }
    if (bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *prog;
    int links = 0;
    bpf_object__for_each_program(prog, obj)
    {
        struct bpf_link *link = bpf_program__attach(prog);
        if (!link) {
            fprintf(stderr, "cannot attach %s (section %s): errno %d\n", bpf_program__name(prog), bpf_program__section_name(prog), errno);
            return 1;
        }
        links++;
    }
    struct ring_stats rings[16] = { 0 };
    struct ring_buffer *rb = NULL;
    struct perf_buffer *pbs[16] = { 0 };
    int nrings = 0;
    struct bpf_map *map;
    bpf_object__for_each_map(map, obj)
    {
        enum bpf_map_type t = bpf_map__type(map);
        if ((t != BPF_MAP_TYPE_RINGBUF && t != 1527 && t != BPF_MAP_TYPE_PERF_EVENT_ARRAY) || nrings == 16)
            continue;
        struct ring_stats *s = &rings[nrings++];
        s->name = bpf_map__name(map);
        if (t == BPF_MAP_TYPE_PERF_EVENT_ARRAY) {
            pbs[nrings - 1] = perf_buffer__new(bpf_map__fd(map), 16, on_sample, NULL, s, NULL);
            if (!pbs[nrings - 1]) {
                fprintf(stderr, "cannot read perf buffer %s: errno %d\n", s->name, errno);
                return 1;
            }
            continue;
        }
        int err = rb ? ring_buffer__add(rb, bpf_map__fd(map), on_record, s) : 0;
        if (!rb)
            rb = ring_buffer__new(bpf_map__fd(map), on_record, s, NULL);
        if (!rb || err) {
            fprintf(stderr, "cannot read ring buffer %s: errno %d\n", s->name, errno);
            return 1;
        }
    }
    printf("attached %d\n", links);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    if (rb && ring_buffer__consume(rb) < 0) {
        fprintf(stderr, "ring_buffer__consume: errno %d\n", errno);
        return 1;
    }
    for (int i = 0; i < nrings; i++)
        if (pbs[i] && perf_buffer__consume(pbs[i]) < 0) {
            fprintf(stderr, "perf_buffer__consume: errno %d\n", errno);
            return 1;
        }
    for (int i = 0; i < nrings; i++)
        printf("%s: %lu records of %zu bytes, first u32 sum %lu\n", rings[i].name, rings[i].records, rings[i].size, rings[i].first_u32_sum);
    ring_buffer__free(rb);
    for (int i = 0; i < nrings; i++)
        perf_buffer__free(pbs[i]);
    bpf_object__for_each_map(map, obj)
    {
        enum bpf_map_type t = bpf_map__type(map);
        if (t == BPF_MAP_TYPE_HASH || t == BPF_MAP_TYPE_ARRAY || t == 1501 || t == 1503)
            print_map(map);
        else if (t == 1502)
            print_per_thread(map);
    }
    bpf_object__close(obj);
    return 0;
}
