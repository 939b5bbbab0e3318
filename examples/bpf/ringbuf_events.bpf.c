// Events to a ring buffer (reserve/submit, discard, output) and to a perf event array.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct event {
    __u64 seq;
    __u32 pid;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} rb SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} perf SEC(".maps");

SEC("uprobe/emit")
int emit(__u64 *seq)
{
    struct event *e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
    if (!e)
        return -1;
    e->seq = *seq;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    if (*seq % 4 == 3) {
        bpf_ringbuf_discard(e, 0);
    } else {
        bpf_ringbuf_submit(e, 0);
    }
    __u64 copy = *seq * 10;
    bpf_ringbuf_output(&rb, &copy, sizeof(copy), 0);
    bpf_perf_event_output(seq, &perf, BPF_F_CURRENT_CPU, &copy, sizeof(copy));
    return bpf_ringbuf_query(&rb, BPF_RB_AVAIL_DATA) > 0;
}

char LICENSE[] SEC("license") = "GPL";
