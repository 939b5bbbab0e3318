// bpf_get_ns_current_pid_tgid on the frames target's inner(): with the pid namespace the test
// writes into pidns_in (0: its nsfs device, 1: its inode), with a wrong inode, and with a
// wrong size. Results (pidns_results): 0 the result, 1 the pid, 2 the tgid; 3 the result and
// 4 the pid with the wrong inode; 5 the result with the wrong size.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} pidns_in SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __s64);
} pidns_results SEC(".maps");

static __always_inline void put(__u32 k, __s64 v)
{
    bpf_map_update_elem(&pidns_results, &k, &v, BPF_ANY);
}

SEC("uprobe//proc/self/exe:inner")
int ns_ids(struct pt_regs *ctx)
{
    __u32 k0 = 0, k1 = 1;
    __u64 *dev = bpf_map_lookup_elem(&pidns_in, &k0), *ino = bpf_map_lookup_elem(&pidns_in, &k1);
    if (!dev || !ino)
        return 0;
    struct bpf_pidns_info info = { 7, 7 };
    put(0, bpf_get_ns_current_pid_tgid(*dev, *ino, &info, sizeof(info)));
    put(1, info.pid);
    put(2, info.tgid);
    info.pid = 7;
    put(3, bpf_get_ns_current_pid_tgid(*dev, *ino + 1, &info, sizeof(info)));
    put(4, info.pid);
    put(5, bpf_get_ns_current_pid_tgid(*dev, *ino, &info, 4));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
