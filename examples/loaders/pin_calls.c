// A libbpf loader that leaves its probes behind, as daemonless tools do: `pin` attaches each
// `uprobe/FUNC` / `uretprobe/FUNC` program of OBJ to FUNC of BINARY (as count_calls does),
// pins every link at DIR/PROGRAM and the `stats` map at DIR/stats, and exits: the probes stay
// attached while pinned. `dump` opens the pinned map and prints it (and unpins it with
// `unpin`); `unpin` removes the link pins (libbpf's bpf_link__unpin, an unlink), which
// detaches them. Runs the same against the kernel and, preloaded with the syscall server
// (`bpftime load -- pin_calls ...`), against bpftime.
// Build: cc -O2 pin_calls.c -lbpf -o pin_calls
// Usage: pin_calls pin OBJ BINARY DIR | pin_calls dump DIR [unpin] | pin_calls unpin OBJ DIR
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int pin(const char *path, const char *binary, const char *dir)
{
    struct bpf_object *obj = bpf_object__open_file(path, NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", path);
        return 1;
    }
    if (mkdir(dir, 0700) && errno != EEXIST) {
        perror(dir);
        return 1;
    }
    char at[PATH_MAX];
    struct bpf_program *prog;
    int links = 0;
    bpf_object__for_each_program(prog, obj)
    {
        const char *sec = bpf_program__section_name(prog);
        const char *func = strchr(sec, '/');
        if (!func)
            continue;
        LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = func + 1, .retprobe = strncmp(sec, "uretprobe", 9) == 0);
        struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, -1, binary, 0, &opts);
        snprintf(at, sizeof at, "%s/%s", dir, bpf_program__name(prog));
        if (!link || bpf_link__pin(link, at)) {
            fprintf(stderr, "cannot attach and pin %s at %s\n", bpf_program__name(prog), at);
            return 1;
        }
        links++;
    }
    snprintf(at, sizeof at, "%s/stats", dir);
    struct bpf_map *stats = bpf_object__find_map_by_name(obj, "stats");
    if (!stats || bpf_map__pin(stats, at)) {
        fprintf(stderr, "cannot pin the stats map at %s\n", at);
        return 1;
    }
    printf("pinned %d links and a map\n", links);
    bpf_object__close(obj);
    return 0;
}

static int dump(const char *dir, int unpin)
{
    char at[PATH_MAX];
    snprintf(at, sizeof at, "%s/stats", dir);
    int fd = bpf_obj_get(at);
    if (fd < 0) {
        fprintf(stderr, "cannot open %s: %s\n", at, strerror(errno));
        return 1;
    }
    for (__u32 k = 0; k < 3; k++) {
        __u64 v = 0;
        if (bpf_map_lookup_elem(fd, &k, &v)) {
            fprintf(stderr, "lookup of %u failed\n", k);
            return 1;
        }
        printf("stats[%u] = %llu\n", k, (unsigned long long)v);
    }
    if (unpin && unlink(at)) {
        perror(at);
        return 1;
    }
    return 0;
}

static int unpin(const char *path, const char *dir)
{
    struct bpf_object *obj = bpf_object__open_file(path, NULL);
    if (libbpf_get_error(obj)) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    char at[PATH_MAX];
    struct bpf_program *prog;
    int n = 0;
    bpf_object__for_each_program(prog, obj)
    {
        snprintf(at, sizeof at, "%s/%s", dir, bpf_program__name(prog));
        struct bpf_link *link = bpf_link__open(at);
        if (!link || bpf_link__unpin(link)) {
            fprintf(stderr, "cannot unpin %s\n", at);
            return 1;
        }
        bpf_link__destroy(link);
        n++;
    }
    printf("unpinned %d links\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "pin"))
        return pin(argv[2], argv[3], argv[4]);
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "dump"))
        return dump(argv[2], argc == 4 && !strcmp(argv[3], "unpin"));
    if (argc == 4 && !strcmp(argv[1], "unpin"))
        return unpin(argv[2], argv[3]);
    fprintf(stderr, "usage: %s pin OBJ BINARY DIR | %s dump DIR [unpin] | %s unpin OBJ DIR\n", argv[0], argv[0], argv[0]);
    return 2;
}
