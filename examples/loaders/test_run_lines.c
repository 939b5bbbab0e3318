// Runs programs of an object once each, in the order named, by BPF_PROG_TEST_RUN (libbpf's
// bpf_prog_test_run_opts), and prints what each returned and the first that many values of
// its `out` array (signed 64-bit), one line per program: what a test compares between the
// kernel and bpftime's syscall server for the same unmodified loader.
// Build: cc -O2 test_run_lines.c -lbpf -o test_run_lines
// Usage: test_run_lines OBJ PROG...
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OBJ PROG...\n", argv[0]);
        return 2;
    }
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (libbpf_get_error(obj) || bpf_object__load(obj)) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    int out = bpf_object__find_map_fd_by_name(obj, "out");
    for (int a = 2; a < argc; a++) {
        struct bpf_program *prog = bpf_object__find_program_by_name(obj, argv[a]);
        if (!prog) {
            fprintf(stderr, "no program %s\n", argv[a]);
            return 1;
        }
        __u64 args[4] = {};
        LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof(args));
        if (bpf_prog_test_run_opts(bpf_program__fd(prog), &opts)) {
            printf("%s: test run failed\n", argv[a]);
            continue;
        }
        printf("%s: %u:", argv[a], opts.retval);
        for (__u32 k = 0; k < opts.retval && k < 64; k++) {
            long long v = 0;
            bpf_map_lookup_elem(out, &k, &v);
            printf(" %lld", v);
        }
        printf("\n");
    }
    return 0;
}
