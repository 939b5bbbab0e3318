// bpf_get_current_task_btf() read directly, as programs built against vmlinux.h do (no
// bpf_probe_read: the kernel hands out a BTF-typed pointer the program may dereference), on the
// `calls` target's add(), in count_calls's interface (results in `stats`): ids, the parent,
// the name, the mount namespace, and the command line through the task's mm; and a chain of
// pointers that may end in NULL (the kernel's loads through a BTF pointer never fault: one
// that finds nothing reads 0), after which the program goes on.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 11);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

enum { CALLS, TGID, PID, PARENT_TGID, TGID_IS_PIDS, COMM, MNT_NS, ARGS_LEN, ARGV0, WENT_ON, ANCESTOR };

static __always_inline void set(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p = v;
}

SEC("uprobe/add")
int BPF_KPROBE(on_add)
{
    struct task_struct *t = bpf_get_current_task_btf();
    __u32 k = CALLS;
    __u64 *calls = bpf_map_lookup_elem(&stats, &k);
    if (calls)
        *calls += 1;
    // Four generations up: past what a stand-in task fills in, a NULL on the way.
    set(ANCESTOR, t->real_parent->real_parent->real_parent->real_parent->tgid);
    set(WENT_ON, 1);
    set(TGID, t->tgid);
    set(PID, t->pid);
    set(PARENT_TGID, t->real_parent->tgid);
    set(TGID_IS_PIDS, (bpf_get_current_pid_tgid() >> 32) == t->tgid && (__u32)bpf_get_current_pid_tgid() == t->pid);
    set(COMM, *(__u64 *)t->comm);
    set(MNT_NS, t->nsproxy->mnt_ns->ns.inum);
    // The command line's bytes, and the first 8 of argv[0], from the process's memory.
    struct mm_struct *mm = t->mm;
    __u64 argv0 = 0;
    bpf_probe_read_user(&argv0, sizeof(argv0), (void *)mm->arg_start);
    set(ARGS_LEN, mm->arg_end - mm->arg_start);
    set(ARGV0, argv0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
