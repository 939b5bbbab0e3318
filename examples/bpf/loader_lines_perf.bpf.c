// loader_lines.bpf.c through a perf buffer: each string next_line() returns is sent with
// bpf_perf_event_output to the current CPU's ring of a PERF_EVENT_ARRAY.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct line {
    __u32 pid;
    char text[60];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} lines SEC(".maps");

SEC("uretprobe/next_line")
int BPF_KRETPROBE(line_returned, const char *ret)
{
    struct line l = {};
    l.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_probe_read_user_str(l.text, sizeof(l.text), ret);
    bpf_perf_event_output(ctx, &lines, BPF_F_CURRENT_CPU, &l, sizeof(l));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
