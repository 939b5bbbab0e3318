// A libbpf loader as people write them: opens an eBPF object, loads it, attaches each
// `uprobe/FUNC` / `uretprobe/FUNC` program to FUNC of BINARY (libbpf resolves the offset and
// opens the perf event), says "attached", waits for a line on stdin, then prints the `stats`
// map. Runs the same against the kernel and, preloaded with the syscall server
// (`bpftime load -- count_calls ...`), against bpftime.
// Build: cc -O2 count_calls.c -lbpf -o count_calls
// Usage: count_calls OBJ BINARY   (COUNT_CALLS_PID=N attaches for process N only; 0 is the
// loader itself, as libbpf takes it; the default, -1, every process)
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s OBJ BINARY\n", argv[0]);
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
    const char *pid_env = getenv("COUNT_CALLS_PID");
    int pid = pid_env ? atoi(pid_env) : -1;
    struct bpf_program *prog;
    int links = 0;
    bpf_object__for_each_program(prog, obj)
    {
        const char *sec = bpf_program__section_name(prog);
        const char *func = strchr(sec, '/');
        if (!func)
            continue;
        LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = func + 1, .retprobe = strncmp(sec, "uretprobe", 9) == 0);
        struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, pid, argv[2], 0, &opts);
        if (!link) {
            fprintf(stderr, "cannot attach %s to %s:%s\n", bpf_program__name(prog), argv[2], func + 1);
            return 1;
        }
        links++;
    }
    printf("attached %d\n", links);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    struct bpf_map *stats = bpf_object__find_map_by_name(obj, "stats");
    for (__u32 k = 0; stats && k < bpf_map__max_entries(stats); k++) {
        __u64 v = 0;
        if (bpf_map__lookup_elem(stats, &k, sizeof k, &v, sizeof v, 0)) {
            fprintf(stderr, "lookup of %u failed\n", k);
            return 1;
        }
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    bpf_object__close(obj);
    return 0;
}
