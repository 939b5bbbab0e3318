// A bad program on purpose: it reads a field the kernel's task_struct does not have, with no
// `bpf_core_field_exists` check around the read. Relocation poisons the read (as libbpf does)
// and loading refuses it, naming the field.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct task_struct___local {
    int no_such_field;
} __attribute__((preserve_access_index));

SEC("uprobe")
int unguarded(void *ctx)
{
    struct task_struct___local *task = (void *)bpf_get_current_task();
    return BPF_CORE_READ(task, no_such_field);
}

char LICENSE[] SEC("license") = "GPL";
