// Sends one record per add() call of the `calls` target through a ring buffer and a perf
// buffer (`bpftime run` prints them, decoded with this object's BTF), and has sections that
// cannot be attached here, each for its own reason: a tracepoint, a binary that does not
// exist, a library the target never loads.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct add_event {
    __s64 a;
    __s64 b;
    __u32 pid;
    char comm[16];
};

// A global of the record type puts it in the object's BTF (clang emits none for types only
// locals use), so readers can decode records; libbpf-based projects do the same.
struct add_event *unused_add_event __attribute__((unused));

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

SEC("uprobe//proc/self/exe:add")
int BPF_KPROBE(on_add, long a, long b)
{
    struct add_event e = {};
    e.a = a;
    e.b = -b;
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    bpf_ringbuf_output(&events, &e, sizeof(e), 0);
    bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &e, sizeof(e));
    return 0;
}

SEC("tracepoint/sched/sched_switch")
int on_sched_switch(void *ctx)
{
    return 0;
}

SEC("uprobe//no/such/binary:f")
int on_missing_binary(struct pt_regs *ctx)
{
    return 0;
}

SEC("uprobe/libnotloaded.so:f")
int on_unloaded_library(struct pt_regs *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
