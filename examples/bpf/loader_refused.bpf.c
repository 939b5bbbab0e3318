// A uprobe program bpftime cannot run: it asks for bpf_send_signal (a helper that acts on the
// kernel's view of the task). Loaders must get a clear refusal at load time, with the reason.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("uprobe/add")
int BPF_KPROBE(signal_on_add)
{
    bpf_send_signal(10);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
