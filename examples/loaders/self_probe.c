// A loader that probes itself, as libbpf's own examples do (libbpf-bootstrap's `uprobe` and
// `minimal`): attaches `self_probe.bpf.c`'s programs to functions of its own executable (for
// pid 0, and for every process through `/proc/self/exe` in a section name) and to the write(2)
// tracepoint, calls those functions and write(2) N times, forks a child that calls them 100
// times more at once (the probes for pid 0 stay with the loader, the one for every process
// counts the child's calls too), then prints the `stats` map. On the kernel the probes fire in
// the loader; under `bpftime load -- self_probe ...` too.
// Build: cc -O2 self_probe.c -lbpf -o self_probe
// Usage: self_probe OBJ N
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) int self_add(int a, int b)
{
    __asm__ volatile("" ::: "memory");
    return a + b;
}

__attribute__((noinline)) int self_sub(int a, int b)
{
    __asm__ volatile("" ::: "memory");
    return a - b;
}

static struct bpf_program *program(struct bpf_object *obj, const char *name)
{
    struct bpf_program *p = bpf_object__find_program_by_name(obj, name);
    if (!p) {
        fprintf(stderr, "no program %s\n", name);
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s OBJ N\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    __u32 zero = 0;
    __u64 me = getpid();
    if (bpf_map__update_elem(bpf_object__find_map_by_name(obj, "config"), &zero, sizeof zero, &me, sizeof me, 0)) {
        fprintf(stderr, "cannot set the pid\n");
        return 1;
    }
    LIBBPF_OPTS(bpf_uprobe_opts, entry, .func_name = "self_add");
    LIBBPF_OPTS(bpf_uprobe_opts, ret, .func_name = "self_add", .retprobe = true);
    struct bpf_link *links[] = {
        bpf_program__attach_uprobe_opts(program(obj, "on_add"), 0, "/proc/self/exe", 0, &entry),
        bpf_program__attach_uprobe_opts(program(obj, "on_add_return"), 0, "/proc/self/exe", 0, &ret),
        bpf_program__attach(program(obj, "on_sub")),
        bpf_program__attach(program(obj, "on_write")),
    };
    for (unsigned i = 0; i < sizeof links / sizeof links[0]; i++) {
        if (libbpf_get_error(links[i])) {
            fprintf(stderr, "attach %u failed\n", i);
            return 1;
        }
    }
    int fd = open("/dev/null", O_WRONLY);
    long sum = 0;
    for (int i = 0; i < n; i++) {
        sum += self_add(i, 2 * i);
        sum += self_sub(3 * i, i);
        if (write(fd, "x", 1) != 1)
            return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 100; i++) {
            sum += self_add(i, i);
            sum += self_sub(i, 1);
        }
        _exit(sum > 0 ? 0 : 1);
    }
    int status = 1;
    if (child < 0 || waitpid(child, &status, 0) != child || status != 0) {
        fprintf(stderr, "the child failed\n");
        return 1;
    }
    struct bpf_map *stats = bpf_object__find_map_by_name(obj, "stats");
    for (__u32 k = 0; k < bpf_map__max_entries(stats); k++) {
        __u64 v = 0;
        if (bpf_map__lookup_elem(stats, &k, sizeof k, &v, sizeof v, 0)) {
            fprintf(stderr, "lookup of %u failed\n", k);
            return 1;
        }
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    printf("sum %ld\n", sum);
    bpf_object__close(obj);
    return 0;
}
