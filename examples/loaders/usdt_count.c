// A libbpf USDT loader: attaches the object's program to USDT probe PROVIDER:NAME of BINARY
// (bpf_program__attach_usdt: libbpf reads the ELF notes, fills its spec maps and opens a uprobe
// per call site), says "attached", waits for a line on stdin, prints the `stats` map.
// Build: cc -O2 usdt_count.c -lbpf -o usdt_count
// Usage: usdt_count OBJ BINARY PROVIDER NAME
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s OBJ BINARY PROVIDER NAME\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *prog = bpf_object__next_program(obj, NULL);
    struct bpf_link *link = bpf_program__attach_usdt(prog, -1, argv[2], argv[3], argv[4], NULL);
    if (!link) {
        fprintf(stderr, "cannot attach to %s:%s:%s\n", argv[2], argv[3], argv[4]);
        return 1;
    }
    printf("attached 1\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    struct bpf_map *stats = bpf_object__find_map_by_name(obj, "stats");
    for (__u32 k = 0; k < 3; k++) {
        __u64 v = 0;
        bpf_map__lookup_elem(stats, &k, sizeof k, &v, sizeof v, 0);
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    bpf_link__destroy(link);
    bpf_object__close(obj);
    return 0;
}
