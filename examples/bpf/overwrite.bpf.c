// What another user could plant in a shared region: a uprobe that overwrites the `victim`
// target's string with bpf_probe_write_user. bpftime must never run it in someone else's
// process.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("uprobe//proc/self/exe:show")
int BPF_KPROBE(on_show, char *s)
{
    char pwned[] = "pwned";
    bpf_probe_write_user(s, pwned, sizeof(pwned));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
