// Ring buffer consumers (libbpf's ring_buffer__poll: epoll on the map fd) in the two places a
// loader's fds change under it, printing how many records each poll got, to compare with the
// kernel: a ring closed while it held a record and a new ring made on the same fd number, and
// a child forked after the consumer was set up (a loader that daemonises). Records come from
// a raw tracepoint program run with BPF_PROG_TEST_RUN.
// Build: cc -O2 ring_reuse.c -lbpf -o ring_reuse    Run: ./ring_reuse
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int got;

static int on_record(void *ctx, void *data, size_t size)
{
    got++;
    return 0;
}

// A raw tracepoint program that outputs one 8-byte record to ring `map`.
static int writer(int map)
{
    struct bpf_insn insns[] = {
        { .code = BPF_ST | BPF_MEM | BPF_DW, .dst_reg = BPF_REG_10, .off = -8, .imm = 42 },
        { .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map },
        { 0 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_10 },
        { .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = BPF_REG_2, .imm = -8 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = 8 },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_4, .imm = 0 },
        { .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_ringbuf_output },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    return bpf_prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, "ring_writer", "GPL", insns, sizeof(insns) / sizeof(insns[0]), NULL);
}

static void write_one(int prog)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts);
    if (bpf_prog_test_run_opts(prog, &opts) != 0)
        printf("test run: %s\n", strerror(errno));
}

static int poll_once(struct ring_buffer *rb)
{
    got = 0;
    int n = ring_buffer__poll(rb, 1000);
    return n < 0 ? n : got;
}

int main(void)
{
    int first = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "first", 0, 0, 4096, NULL);
    int first_writer = writer(first);
    struct ring_buffer *rb = ring_buffer__new(first, on_record, NULL, NULL);
    write_one(first_writer);
    printf("first ring: %d\n", poll_once(rb));
    // A record left in it when it goes.
    write_one(first_writer);
    ring_buffer__free(rb);
    close(first);
    int second = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "second", 0, 0, 4096, NULL);
    printf("second ring on the first's fd number: %s\n", second == first ? "yes" : "no");
    int second_writer = writer(second);
    rb = ring_buffer__new(second, on_record, NULL, NULL);
    write_one(second_writer);
    printf("second ring: %d\n", poll_once(rb));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        write_one(second_writer);
        printf("a forked child's poll: %d\n", poll_once(rb));
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    return 0;
}
