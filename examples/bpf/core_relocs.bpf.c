// CO-RE relocations of every kind libbpf applies, resolved against the running kernel's BTF,
// for `examples/loaders/count_calls.c` (the kernel, relocated by libbpf) and `bpftime run`
// (relocated by bpftime) to compare: each `stats` slot holds one relocated value.
// Attached to `fact` of the `calls` target (the section names only the function).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// Local views of kernel types, with `___suffix` flavors so they match the kernel's types by
// their essential names. Fields are looked up by name; offsets come from the kernel.
struct task_struct___local {
    int pid;
    char comm[16];
    int no_such_field;
    struct nsproxy___local *nsproxy;
} __attribute__((preserve_access_index));

struct nsproxy___local {
    struct mnt_namespace___local *mnt_ns;
} __attribute__((preserve_access_index));

struct ns_common___local {
    unsigned int inum;
} __attribute__((preserve_access_index));

struct mnt_namespace___local {
    struct ns_common___local ns;
} __attribute__((preserve_access_index));

// Bitfields: `fclone` is a member of sk_buff itself, `pkt_type` one of an anonymous struct
// inside it (found by name through the anonymous members).
struct sk_buff___local {
    __u8 fclone : 2;
    __u8 pkt_type : 3;
} __attribute__((preserve_access_index));

struct no_such_type___local {
    int a;
} __attribute__((preserve_access_index));

// The kernel's values differ from these: relocation replaces them.
enum bpf_map_type___local {
    BPF_MAP_TYPE_RINGBUF___local = 5,
    NO_SUCH_MAP_TYPE___local = 6,
};

// `sp` is 8 bytes in the kernel: the 4-byte load is widened (libbpf's memory size
// adjustment, allowed for unsigned integers and pointers).
struct pt_regs___local {
    unsigned int sp;
} __attribute__((preserve_access_index));

#define SLOTS 24

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void put(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p = v;
}

SEC("uprobe/fact")
int core_relocs(struct pt_regs___local *ctx)
{
    struct task_struct___local *task = (void *)bpf_get_current_task();
    struct sk_buff___local *skb = 0;

    put(0, bpf_core_field_exists(task->pid));
    put(1, bpf_core_field_exists(task->no_such_field));
    put(2, bpf_core_type_exists(struct task_struct___local));
    put(3, bpf_core_type_exists(struct no_such_type___local));
    put(4, bpf_core_type_size(struct task_struct___local));
    put(5, bpf_core_enum_value_exists(enum bpf_map_type___local, BPF_MAP_TYPE_RINGBUF___local));
    put(6, bpf_core_enum_value(enum bpf_map_type___local, BPF_MAP_TYPE_RINGBUF___local));
    put(7, bpf_core_enum_value_exists(enum bpf_map_type___local, NO_SUCH_MAP_TYPE___local));
    put(8, bpf_core_field_size(task->comm));
    put(9, bpf_core_field_offset(task->pid));
    put(10, __builtin_preserve_field_info(task->pid, BPF_FIELD_SIGNED));
    put(11, __builtin_preserve_field_info(skb->fclone, BPF_FIELD_BYTE_OFFSET));
    put(12, __builtin_preserve_field_info(skb->fclone, BPF_FIELD_BYTE_SIZE));
    put(13, __builtin_preserve_field_info(skb->fclone, BPF_FIELD_LSHIFT_U64));
    put(14, __builtin_preserve_field_info(skb->fclone, BPF_FIELD_RSHIFT_U64));
    put(15, __builtin_preserve_field_info(skb->pkt_type, BPF_FIELD_BYTE_OFFSET));
    put(16, __builtin_preserve_field_info(skb->pkt_type, BPF_FIELD_LSHIFT_U64));
    put(17, __builtin_preserve_field_info(skb->pkt_type, BPF_FIELD_RSHIFT_U64));
    put(18, bpf_core_type_id_kernel(struct task_struct___local) != 0);
    // A read of a field this kernel lacks, behind its existence check: libbpf poisons the
    // read and the verifier must find it dead.
    __u64 v = 77;
    if (bpf_core_field_exists(task->no_such_field))
        v = BPF_CORE_READ(task, no_such_field);
    put(19, v);
    put(20, ctx->sp);
    put(21, BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum));
    put(22, bpf_core_type_id_local(struct task_struct___local));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
