// bpf_probe_read_user_str on the `strings` target's take(): each hit records the helper's
// result and the whole 16-byte destination (prefilled with 0xaa), and counts the string as a
// hash map key in a zeroed buffer. Compared byte for byte with the kernel.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct record {
    __s64 ret;
    char buf[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, struct record);
} records SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} hits SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, char[16]);
    __type(value, __u64);
} keys SEC(".maps");

SEC("uprobe//proc/self/exe:take")
int BPF_KPROBE(on_take, const char *s)
{
    __u32 zero = 0;
    __u32 *n = bpf_map_lookup_elem(&hits, &zero);
    if (!n)
        return 0;
    __u32 idx = __sync_fetch_and_add(n, 1);
    struct record r;
    __builtin_memset(&r, 0xaa, sizeof r);
    r.ret = bpf_probe_read_user_str(r.buf, sizeof r.buf, s);
    bpf_map_update_elem(&records, &idx, &r, BPF_ANY);
    char key[16] = {};
    if (bpf_probe_read_user_str(key, sizeof key, s) > 0) {
        __u64 one = 1, *v = bpf_map_lookup_elem(&keys, key);
        if (v)
            __sync_fetch_and_add(v, 1);
        else
            bpf_map_update_elem(&keys, key, &one, BPF_ANY);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
