// Attaches every program of an object (libbpf's auto-attach) and prints each link's
// /proc/self/fdinfo as the loader reads it, but for the lines whose values differ between runs
// (the file's place, the ids): link type, program tag, and what the link probes.
// Build: cc -O2 link_fdinfo.c -lbpf -o link_fdinfo
// Usage: link_fdinfo OBJ
#include <bpf/libbpf.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OBJ\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct bpf_program *p;
    bpf_object__for_each_program(p, obj) {
        struct bpf_link *link = bpf_program__attach(p);
        if (!link) {
            printf("%s: cannot attach\n", bpf_program__name(p));
            continue;
        }
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", bpf_link__fd(link));
        FILE *f = fopen(path, "r");
        if (!f) {
            printf("%s: no fdinfo\n", bpf_program__name(p));
            continue;
        }
        static const char *skip[] = { "pos:", "mnt_id:", "ino:", "link_id:", "prog_id:" };
        while (fgets(line, sizeof(line), f)) {
            int skipped = 0;
            for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
                skipped |= strncmp(line, skip[i], strlen(skip[i])) == 0;
            if (!skipped)
                printf("%s %s", bpf_program__name(p), line);
        }
        fclose(f);
    }
    return 0;
}
