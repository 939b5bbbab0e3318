// A probe the agent must refuse: `tiny` in the calls target is shorter than a 5-byte jump.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("uprobe//proc/self/exe:tiny")
int on_tiny(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
