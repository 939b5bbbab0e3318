// A skeleton-based libbpf loader (bpftool gen skeleton malloc_per_pid.bpf.o > the header): sets
// the program's `comm_prefix` through skel->rodata before loading, attaches count_malloc to
// libc's malloc, says "attached", waits for a line on stdin, then walks the per-pid hash map and
// prints the counts, largest first.
// Build: bpftool gen skeleton malloc_per_pid.bpf.o > malloc_per_pid.skel.h
//        cc -O2 -I. malloc_per_pid.c -lbpf -o malloc_per_pid
// Usage: malloc_per_pid PREFIX
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "malloc_per_pid.skel.h"

int main(int argc, char **argv)
{
    struct malloc_per_pid_bpf *skel = malloc_per_pid_bpf__open();
    if (!skel) {
        fprintf(stderr, "cannot open the skeleton\n");
        return 1;
    }
    if (argc > 1)
        strncpy((char *)skel->rodata->comm_prefix, argv[1], sizeof(skel->rodata->comm_prefix) - 1);
    if (malloc_per_pid_bpf__load(skel)) {
        fprintf(stderr, "cannot load the skeleton\n");
        return 1;
    }
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = "malloc");
    skel->links.count_malloc = bpf_program__attach_uprobe_opts(skel->progs.count_malloc, -1, "libc.so.6", 0, &opts);
    if (!skel->links.count_malloc) {
        fprintf(stderr, "cannot attach to libc's malloc\n");
        return 1;
    }
    printf("attached 1\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0;
    int fd = bpf_map__fd(skel->maps.calls);
    __u32 key, next, *prev = NULL;
    unsigned long long counts[1024];
    int n = 0;
    while (n < 1024 && bpf_map_get_next_key(fd, prev, &next) == 0) {
        __u64 v = 0;
        bpf_map_lookup_elem(fd, &next, &v);
        counts[n++] = v;
        key = next;
        prev = &key;
    }
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (counts[j] > counts[i]) {
                unsigned long long t = counts[i];
                counts[i] = counts[j];
                counts[j] = t;
            }
    printf("%d processes\n", n);
    for (int i = 0; i < n; i++)
        printf("malloc calls: %llu\n", counts[i]);
    malloc_per_pid_bpf__destroy(skel);
    return 0;
}
