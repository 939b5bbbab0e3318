// A perf buffer consumer that falls behind: attaches OBJ's `uretprobe/FUNC` program to FUNC of
// BINARY with a one-page perf buffer per CPU and a lost-samples callback, says "attached",
// and on each line read from stdin polls until the buffer stays empty, printing each sample's
// text, each loss report (`lost N`) and then `drained: S samples, L lost` so far. The caller
// makes more samples than fit between two lines: the kernel reports the loss with the next
// sample that fits (libbpf's `lost_cb`).
// Build: cc -O2 perf_lost.c -lbpf -o perf_lost
// Usage: perf_lost OBJ BINARY
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>
#include <string.h>

static unsigned long long samples, lost;

static void on_sample(void *ctx, int cpu, void *data, __u32 size)
{
    // struct line { __u32 pid; char text[60]; }
    printf("%.60s\n", (const char *)data + 4);
    samples++;
}

static void on_lost(void *ctx, int cpu, __u64 n)
{
    printf("lost %llu\n", (unsigned long long)n);
    lost += n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s OBJ BINARY\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *prog = bpf_object__next_program(obj, NULL);
    const char *func = strchr(bpf_program__section_name(prog), '/') + 1;
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = func, .retprobe = true);
    struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, -1, argv[2], 0, &opts);
    struct perf_buffer *pb = perf_buffer__new(bpf_object__find_map_fd_by_name(obj, "lines"), 1, on_sample, on_lost, NULL, NULL);
    if (!link || !pb) {
        fprintf(stderr, "cannot attach or open the perf buffer\n");
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    char line[16];
    while (fgets(line, sizeof line, stdin)) {
        // Until two polls in a row find nothing (the records are all there before the line).
        for (int idle = 0; idle < 2;)
            idle = perf_buffer__poll(pb, 100) > 0 ? 0 : idle + 1;
        printf("drained: %llu samples, %llu lost\n", samples, lost);
        fflush(stdout);
    }
    perf_buffer__free(pb);
    bpf_link__destroy(link);
    bpf_object__close(obj);
    return 0;
}
