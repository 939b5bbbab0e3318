// A function-latency histogram loader: attaches func_entry / func_return of
// loader_latency.bpf.o to FUNC of BINARY (uprobe + uretprobe), says "attached", waits for a line
// on stdin, prints the log2 histogram (ns) and its total.
// Build: cc -O2 func_latency.c -lbpf -o func_latency
// Usage: func_latency OBJ BINARY FUNC
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s OBJ BINARY FUNC\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const char *names[2] = { "func_entry", "func_return" };
    for (int i = 0; i < 2; i++) {
        struct bpf_program *p = bpf_object__find_program_by_name(obj, names[i]);
        LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = argv[3], .retprobe = i == 1);
        if (!p || !bpf_program__attach_uprobe_opts(p, -1, argv[2], 0, &opts)) {
            fprintf(stderr, "cannot attach %s to %s:%s\n", names[i], argv[2], argv[3]);
            return 1;
        }
    }
    printf("attached 2\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    int fd = bpf_object__find_map_fd_by_name(obj, "hist");
    unsigned long long total = 0;
    for (__u32 slot = 0; slot < 64; slot++) {
        __u64 n = 0;
        bpf_map_lookup_elem(fd, &slot, &n);
        if (n)
            printf("%10llu ns .. %10llu ns: %llu\n", slot ? 1ULL << slot : 0, (2ULL << slot) - 1, (unsigned long long)n);
        total += n;
    }
    printf("total %llu\n", total);
    bpf_object__close(obj);
    return 0;
}
