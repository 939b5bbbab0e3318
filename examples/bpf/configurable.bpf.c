// A program configured at load time, as libbpf tools are: its section names no target (the
// loader says where: `bpftime run --attach on_add=BINARY:add`), a `const volatile` setting
// (`--set min_arg=N`) and a map sized for the run (`--map-size seen=N`). Counts add() calls
// whose first argument is at least min_arg and remembers each such argument.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

const volatile long min_arg = 0;

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, long);
    __type(value, __u8);
} seen SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(on_add, long a)
{
    if (a < min_arg)
        return 0;
    __u32 k = 0;
    __u64 *n = bpf_map_lookup_elem(&hits, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    __u8 one = 1;
    bpf_map_update_elem(&seen, &a, &one, BPF_ANY);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
