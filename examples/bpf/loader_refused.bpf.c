// A uprobe program bpftime cannot run: it asks for bpf_get_branch_snapshot (the CPU's last
// branch records, which only the kernel can read). Loaders must get a clear refusal at load
// time, with the reason.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("uprobe/add")
int BPF_KPROBE(snapshot_on_add)
{
    __u64 entries[4];
    return bpf_get_branch_snapshot(entries, sizeof(entries), 0);
}

char LICENSE[] SEC("license") = "GPL";
