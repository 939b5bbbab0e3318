// opensnoop in userspace: every openat(2) of the traced process, its file name and result
// through a ring buffer (the file name read at entry, the result at exit, matched by thread),
// and counts of the calls on bpftime's marker files (/tmp/bpftime-open-marker*) at entry and
// of their successes at exit.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "openat_args.h"

#define NAME_LEN 64

struct open_event {
    __u32 pid;
    __u32 tid;
    __s64 ret;
    char name[NAME_LEN];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, struct open_event);
} in_flight SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} opens SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} marker_opens SEC(".maps");

static const char marker[] = "/tmp/bpftime-open-marker";

static __always_inline void count(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&marker_opens, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int on_openat_enter(struct enter_args *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct open_event e = {.pid = id >> 32, .tid = (__u32)id};
    bpf_probe_read_user_str(e.name, sizeof e.name, ctx->filename);
    if (bpf_strncmp(e.name, sizeof marker - 1, marker) == 0)
        count(0);
    bpf_map_update_elem(&in_flight, &e.tid, &e, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int on_openat_exit(struct exit_args *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct open_event *e = bpf_map_lookup_elem(&in_flight, &tid);
    if (!e)
        return 0;
    e->ret = ctx->ret;
    if (e->ret >= 0 && bpf_strncmp(e->name, sizeof marker - 1, marker) == 0)
        count(1);
    bpf_ringbuf_output(&opens, e, sizeof *e, 0);
    bpf_map_delete_elem(&in_flight, &tid);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
