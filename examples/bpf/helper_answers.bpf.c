// Helpers other than maps', with what each answers written down: `bpf_snprintf` with the
// conversions, flags and widths the kernel takes, `bpf_strncmp`, the current task's ids, comm
// and cgroup, the pid namespace's view, reads of user memory. Raw tracepoint programs, run in
// the kernel (BPF_PROG_TEST_RUN, in the calling thread) and on both of our engines by
// tests/tests/map_helpers.rs, which compares what they wrote to `out`. The context is four
// words: the address of a string in the test's memory, the device and inode numbers of its pid
// namespace, and the address of three bytes that end just before a page nothing can read.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define OUT_SLOTS 96

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, OUT_SLOTS); __type(key, __u32); __type(value, __s64); } out SEC(".maps");

static __always_inline void put(__u32 *i, __s64 v)
{
    __u32 k = *i;
    __s64 *slot = bpf_map_lookup_elem(&out, &k);
    if (slot)
        *slot = v;
    *i = k + 1;
}

/* The first 24 bytes of `buf`, as three slots. */
static __always_inline void put_bytes(__u32 *i, const char *buf)
{
    put(i, *(const __s64 *)buf);
    put(i, *(const __s64 *)(buf + 8));
    put(i, *(const __s64 *)(buf + 16));
}

/* bpf_snprintf(fmt, args) into a 24-byte buffer (cleared first): its return and the bytes. */
#define FORMAT(i, fmt, ...)                                                       \
    do {                                                                          \
        static const char f[] = fmt;                                              \
        __u64 args[] = { __VA_ARGS__ };                                           \
        char buf[24] = {};                                                        \
        put(i, bpf_snprintf(buf, sizeof(buf), f, args, sizeof(args)));           \
        put_bytes(i, buf);                                                        \
    } while (0)

SEC("raw_tp/sys_enter")
int formatting(__u64 *ctx)
{
    __u32 i = 0;
    char word[8] = "hey";
    FORMAT(&i, "%d %u %x %X", (__u64)-5, 7, 255, 255);
    FORMAT(&i, "%ld %lu %lld %llx", (__u64)-1, (__u64)-1, (__u64)-9, 0xabcdef);
    FORMAT(&i, "%5d|%-5d|%05d", 42, 42, 42);
    FORMAT(&i, "%c%c%% %i", 'a', 'b', 3);
    FORMAT(&i, "<%s> <%s>", (__u64)word, 0);
    FORMAT(&i, "a rather long text: %d", 12345);
    FORMAT(&i, "%px", 0x1234);
    FORMAT(&i, "%+d % d", 5, 5);
    FORMAT(&i, "%lx %x", 0x100000000ull, 0x100000000ull);
    return i;
}

SEC("raw_tp/sys_enter")
int strings(__u64 *ctx)
{
    __u32 i = 0;
    static const char abc[] = "abc";
    static const char abd[] = "abd";
    char s[8] = "abc";
    put(&i, bpf_strncmp(s, 3, abc));
    put(&i, bpf_strncmp(s, 3, abd));
    put(&i, bpf_strncmp(s, 8, abc));
    put(&i, bpf_strncmp(s, 2, abd));
    s[2] = 'e';
    put(&i, bpf_strncmp(s, 3, abd));
    s[0] = 0;
    put(&i, bpf_strncmp(s, 3, abc));
    return i;
}

SEC("raw_tp/sys_enter")
int current_task(__u64 *ctx)
{
    __u32 i = 0;
    put(&i, bpf_get_current_pid_tgid());
    put(&i, bpf_get_current_uid_gid());
    char comm[24] = {};
    put(&i, bpf_get_current_comm(comm, 16));
    put_bytes(&i, comm);
    __builtin_memset(comm, 0xff, sizeof(comm));
    put(&i, bpf_get_current_comm(comm, 4));
    put_bytes(&i, comm);
    put(&i, bpf_get_current_cgroup_id());
    put(&i, bpf_get_numa_node_id());
    struct bpf_pidns_info ns = {};
    put(&i, bpf_get_ns_current_pid_tgid(ctx[1], ctx[2], &ns, sizeof(ns)));
    put(&i, ns.pid);
    put(&i, ns.tgid);
    put(&i, bpf_get_ns_current_pid_tgid(ctx[1], ctx[2] + 1, &ns, sizeof(ns)));
    put(&i, bpf_get_ns_current_pid_tgid(ctx[1], ctx[2], &ns, 4));
    return i;
}

SEC("raw_tp/sys_enter")
int user_memory(__u64 *ctx)
{
    __u32 i = 0;
    char buf[24];
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user(buf, 8, (void *)ctx[0]));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user(buf, 8, (void *)8));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 10, (void *)ctx[0]));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 24, (void *)ctx[0]));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 24, (void *)8));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 1, (void *)ctx[0]));
    put_bytes(&i, buf);
    /* Three bytes and no NUL before an unreadable page. */
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 24, (void *)ctx[3]));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user_str(buf, 3, (void *)ctx[3]));
    put_bytes(&i, buf);
    __builtin_memset(buf, 0x55, sizeof(buf));
    put(&i, bpf_probe_read_user(buf, 8, (void *)ctx[3]));
    put_bytes(&i, buf);
    return i;
}

SEC("raw_tp/sys_enter")
int printing(__u64 *ctx)
{
    __u32 i = 0;
    static const char number[] = "bpftime helper_answers: x=%d y=%lu\n";
    put(&i, bpf_trace_printk(number, sizeof(number), -3, 7));
    static const char text[] = "bpftime helper_answers: %s|%c\n";
    put(&i, bpf_trace_printk(text, sizeof(text), ctx[0], 'q'));
    static const char unknown[] = "bpftime helper_answers: %q\n";
    put(&i, bpf_trace_printk(unknown, sizeof(unknown), 1));
    static const char precision[] = "bpftime helper_answers: %.3s\n";
    put(&i, bpf_trace_printk(precision, sizeof(precision), ctx[0]));
    put(&i, bpf_trace_printk(number, sizeof(number) - 1, 1, 2));
    /* What the kernel takes and what it refuses, by the length printed or -EINVAL. */
    __u8 ip4[4] = { 10, 0, 20, 255 };
    __u8 ip6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 1 };
#define PRINTK(fmt, ...)                                                         \
    do {                                                                         \
        static const char f[] = "bpftime helper_answers: " fmt "\n";            \
        put(&i, bpf_trace_printk(f, sizeof(f), ##__VA_ARGS__));                  \
    } while (0)
    PRINTK("%pI4 %pi4 %pI6", (long)ip4, (long)ip4, (long)ip6);
    PRINTK("%pi6|%pI4", (long)ip6, 8);
    PRINTK("%5s|%-08d|%lld%%", ctx[0], -12, -1);
    PRINTK("%c%c%c", 'x', 'y', 'z');
    PRINTK("%pus.", ctx[0]); /* (%pks reads the same: user space has no kernel memory) */
    PRINTK("%px %pK %p", 1, 2, 3);
    PRINTK("%#x", 1);
    PRINTK("%sabc", ctx[0]);
    PRINTK("%d %d %d %d", 1, 2, 3);
    PRINTK("%llld", 1);
    PRINTK("%hhd", 1);
    PRINTK("%zu", 1);
    PRINTK("%pQ", 1);
    PRINTK("\x01%d", 1);
    PRINTK("%-+ 05d|% d", 7, -7);
    return i;
}

char LICENSE[] SEC("license") = "GPL";
