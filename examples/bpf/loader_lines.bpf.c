// A uretprobe on the `lines` target's next_line(): sends each returned string through a ring
// buffer, as libbpf-tools' bashreadline does for bash's readline.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct line {
    __u32 pid;
    char text[60];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} lines SEC(".maps");

SEC("uretprobe/next_line")
int BPF_KRETPROBE(line_returned, const char *ret)
{
    struct line *l = bpf_ringbuf_reserve(&lines, sizeof(*l), 0);
    if (!l)
        return 0;
    l->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_probe_read_user_str(l->text, sizeof(l->text), ret);
    bpf_ringbuf_submit(l, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
