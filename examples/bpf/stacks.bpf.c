// bpf_get_stack and bpf_get_stackid from uprobes on the frames target, every flag the kernel
// takes (and one it refuses): results and frames (as distances from the probed instruction,
// the same in every run) in stack_results, for comparison with the kernel. Slot k:
//  outer's entry: 0 get_stack(user, 3 frames) result, 1-2 frames 1-2; 3 kernel stack result,
//  4 its buffer's first word (prefilled); 5 unknown flag result, 6 first word; 7 build-id
//  result, 8-9 two records' status, 10 the first's offset in its file, 18 the second's less
//  the first's, 19 the first's build id (8 bytes); 11 skip 1 result, 12 its frame 0; 13
//  build id on a kernel stack, 14 build-id size not a multiple of 32; 15 kernel stackid; 16
//  user stackid (the id); 17 stackid with an unknown flag; 23 stackid in a build-id map.
//  inner's entry: 20 get_stack(user, 3 frames) result, 21-22 frames 1-2.
//  outer's return: 24 get_stack(user, 2 frames) result, 25 frame 1 less frame 0.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 32);
    __type(key, __u32);
    __type(value, __s64);
} stack_results SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 64);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, 8 * sizeof(__u64));
} user_stacks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 64);
    __uint(map_flags, BPF_F_STACK_BUILD_ID);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, 4 * sizeof(struct bpf_stack_build_id));
} build_id_stacks SEC(".maps");

static __always_inline void put(__u32 k, __s64 v)
{
    bpf_map_update_elem(&stack_results, &k, &v, BPF_ANY);
}

SEC("uprobe//proc/self/exe:outer")
int outer_entry(struct pt_regs *ctx)
{
    __u64 buf[8];
    struct bpf_stack_build_id ids[2];
    long r;

    __builtin_memset(buf, 0x55, sizeof(buf));
    r = bpf_get_stack(ctx, buf, 24, BPF_F_USER_STACK);
    put(0, r);
    put(1, buf[1] - buf[0]);
    put(2, buf[2] - buf[0]);

    __builtin_memset(buf, 0x55, sizeof(buf));
    put(3, bpf_get_stack(ctx, buf, 24, 0));
    put(4, buf[0]);

    __builtin_memset(buf, 0x55, sizeof(buf));
    put(5, bpf_get_stack(ctx, buf, 24, BPF_F_USER_STACK | (1 << 12)));
    put(6, buf[0]);

    __builtin_memset(ids, 0x55, sizeof(ids));
    put(7, bpf_get_stack(ctx, ids, sizeof(ids), BPF_F_USER_STACK | BPF_F_USER_BUILD_ID));
    put(8, ids[0].status);
    put(9, ids[1].status);
    put(10, ids[0].offset);
    put(18, ids[1].offset - ids[0].offset);
    put(19, *(__s64 *)ids[0].build_id);

    __builtin_memset(buf, 0x55, sizeof(buf));
    put(11, bpf_get_stack(ctx, buf, 16, BPF_F_USER_STACK | 1));
    put(12, buf[0] - PT_REGS_IP(ctx));

    put(13, bpf_get_stack(ctx, ids, sizeof(ids), BPF_F_USER_BUILD_ID));
    put(14, bpf_get_stack(ctx, ids, 40, BPF_F_USER_STACK | BPF_F_USER_BUILD_ID));

    put(15, bpf_get_stackid(ctx, &user_stacks, 0));
    put(16, bpf_get_stackid(ctx, &user_stacks, BPF_F_USER_STACK));
    put(17, bpf_get_stackid(ctx, &user_stacks, BPF_F_USER_STACK | (1 << 12)));
    put(23, bpf_get_stackid(ctx, &build_id_stacks, BPF_F_USER_STACK));
    return 0;
}

SEC("uprobe//proc/self/exe:inner")
int inner_entry(struct pt_regs *ctx)
{
    __u64 buf[3] = {};
    put(20, bpf_get_stack(ctx, buf, sizeof(buf), BPF_F_USER_STACK));
    put(21, buf[1] - buf[0]);
    put(22, buf[2] - buf[0]);
    return 0;
}

SEC("uretprobe//proc/self/exe:outer")
int outer_return(struct pt_regs *ctx)
{
    __u64 buf[2] = {};
    put(24, bpf_get_stack(ctx, buf, sizeof(buf), BPF_F_USER_STACK));
    put(25, buf[1] - buf[0]);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
