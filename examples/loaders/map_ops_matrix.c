// Runs every map command of bpf(2) on a map of each type bpftime keeps in its region: updates
// with each flag, lookups of present and missing keys, deletes, key walks, lookup-and-delete,
// batches, freeze, and prints what each gave (errno, and the value or key it returned), as
// lines to compare with the kernel's. Build: cc map_ops_matrix.c -o map_ops_matrix
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include "kernel_version.h"
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static int create(__u32 type, __u32 key, __u32 value, __u32 max, __u32 flags, int inner)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key;
    a.value_size = value;
    a.max_entries = max;
    a.map_flags = flags;
    a.inner_map_fd = inner;
    return sys_bpf(BPF_MAP_CREATE, &a);
}

// Map-in-map lookups return the inner map's id, whose number is the kernel's (or bpftime's):
// printed as whether it is the inner map's.
static int id_values;
static __u32 inner_id;

static __u32 map_id(int fd)
{
    struct bpf_map_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd;
    a.info.info_len = sizeof(info);
    a.info.info = (__u64)(unsigned long)&info;
    return sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) == 0 ? info.id : 0;
}

static const char *result(long r)
{
    static char buf[64];
    if (r >= 0)
        snprintf(buf, sizeof(buf), "ok");
    else
        snprintf(buf, sizeof(buf), "%s", strerror(errno));
    return buf;
}

// One map command: key, value (and next key) buffers of 64 bytes; prints the result and the
// first 8 bytes of the value and next key buffers when it succeeded.
static void op(const char *what, int cmd, int fd, const void *key, void *value, void *next, __u64 flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = fd;
    a.key = (__u64)(unsigned long)key;
    if (next)
        a.next_key = (__u64)(unsigned long)next;
    else
        a.value = (__u64)(unsigned long)value;
    a.flags = flags;
    long r = sys_bpf(cmd, &a);
    printf("  %s: %s", what, result(r));
    if (r >= 0 && value && !next && id_values)
        printf(" value %s", *(__u32 *)value == inner_id ? "the inner map's id" : "another id");
    else if (r >= 0 && value && !next)
        printf(" value %llx", *(unsigned long long *)value);
    if (r >= 0 && next)
        printf(" next %llx", *(unsigned long long *)next);
    printf("\n");
}

// A batch command: `count` entries from `in` (NULL: the start); prints the result, the count
// and the first 8 bytes of out_batch. Returns the out_batch word.
static __u64 batch(const char *what, int cmd, int fd, __u32 count, const __u64 *in)
{
    unsigned char keys[64 * 16], values[64 * 16 * 8];
    __u64 out = 0;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    memset(keys, 0, sizeof(keys));
    a.batch.map_fd = fd;
    a.batch.in_batch = (__u64)(unsigned long)in;
    a.batch.out_batch = (__u64)(unsigned long)&out;
    a.batch.keys = (__u64)(unsigned long)keys;
    a.batch.values = (__u64)(unsigned long)values;
    a.batch.count = count;
    long r = sys_bpf(cmd, &a);
    printf("  %s: %s count %u", what, result(r), a.batch.count);
    if (a.batch.count)
        printf(" first key %x out %llx", *(__u32 *)keys, (unsigned long long)out);
    printf("\n");
    return out;
}

int main(void)
{
    int inner = create(BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0, 0);
    inner_id = map_id(inner);
    struct { const char *name; __u32 type, key, value, max, flags; } kinds[] = {
        { "hash", BPF_MAP_TYPE_HASH, 4, 8, 4, 0 },
        { "hash_noprealloc", BPF_MAP_TYPE_HASH, 4, 8, 4, BPF_F_NO_PREALLOC },
        { "array", BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0 },
        { "percpu_hash", BPF_MAP_TYPE_PERCPU_HASH, 4, 8, 4, 0 },
        { "percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 4, 0 },
        { "lru_hash", BPF_MAP_TYPE_LRU_HASH, 4, 8, 4, 0 },
        { "lru_percpu_hash", BPF_MAP_TYPE_LRU_PERCPU_HASH, 4, 8, 4, 0 },
        { "lpm_trie", BPF_MAP_TYPE_LPM_TRIE, 8, 8, 4, BPF_F_NO_PREALLOC },
        { "queue", BPF_MAP_TYPE_QUEUE, 0, 8, 4, 0 },
        { "stack", BPF_MAP_TYPE_STACK, 0, 8, 4, 0 },
        { "bloom_filter", BPF_MAP_TYPE_BLOOM_FILTER, 0, 8, 4, 0 },
        { "stack_trace", BPF_MAP_TYPE_STACK_TRACE, 4, 8, 4, 0 },
        { "prog_array", BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 4, 0 },
        { "array_of_maps", BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 4, 0 },
        { "hash_of_maps", BPF_MAP_TYPE_HASH_OF_MAPS, 4, 4, 4, 0 },
        { "ringbuf", BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0 },
    };
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        int fd = create(kinds[k].type, kinds[k].key, kinds[k].value, kinds[k].max, kinds[k].flags, inner);
        printf("%s: create %s\n", kinds[k].name, result(fd));
        if (fd < 0)
            continue;
        int map_value = kinds[k].type == BPF_MAP_TYPE_ARRAY_OF_MAPS || kinds[k].type == BPF_MAP_TYPE_HASH_OF_MAPS;
        // Hash maps' buckets follow a seeded hash: the order of two keys is the kernel's own.
        int hashed = kinds[k].type == BPF_MAP_TYPE_HASH || kinds[k].type == BPF_MAP_TYPE_PERCPU_HASH || kinds[k].type == BPF_MAP_TYPE_LRU_HASH ||
                     kinds[k].type == BPF_MAP_TYPE_LRU_PERCPU_HASH || kinds[k].type == BPF_MAP_TYPE_HASH_OF_MAPS;
        id_values = map_value;
        unsigned char key[64] = { 0 }, missing[64] = { 0 }, value[512] = { 0 }, next[64] = { 0 };
        // An LPM key is a prefix length then data: 32 bits of 1.2.3.4.
        if (kinds[k].type == BPF_MAP_TYPE_LPM_TRIE) {
            key[0] = 32, key[4] = 1, key[5] = 2, key[6] = 3, key[7] = 4;
            missing[0] = 32, missing[4] = 9;
        } else {
            key[0] = 1;
            missing[0] = 3;
        }
        *(__u64 *)value = map_value ? (__u64)inner : 0x1122334455667788ull;
        const void *no_key = kinds[k].key ? key : NULL;
        op("update any", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_ANY);
        op("update noexist (present)", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_NOEXIST);
        op("update exist (present)", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_EXIST);
        op("update exist (missing)", BPF_MAP_UPDATE_ELEM, fd, kinds[k].key ? missing : NULL, value, NULL, BPF_EXIST);
        op("update flags 4 (lock)", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_F_LOCK);
        op("update flags 8", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, 8);
        op("lookup (present)", BPF_MAP_LOOKUP_ELEM, fd, no_key, value, NULL, 0);
        op("lookup (missing)", BPF_MAP_LOOKUP_ELEM, fd, kinds[k].key ? missing : NULL, value, NULL, 0);
        op("lookup flags 8", BPF_MAP_LOOKUP_ELEM, fd, no_key, value, NULL, 8);
        op("next key (first)", BPF_MAP_GET_NEXT_KEY, fd, NULL, NULL, next, 0);
        op("next key (after present)", BPF_MAP_GET_NEXT_KEY, fd, no_key, NULL, next, 0);
        op("next key (after missing)", BPF_MAP_GET_NEXT_KEY, fd, kinds[k].key ? missing : NULL, NULL, next, 0);
        batch("lookup batch", BPF_MAP_LOOKUP_BATCH, fd, 16, NULL);
        // A second element (the LPM trie's a shorter prefix), then a walk in two calls.
        unsigned char key2[64] = { 0 };
        if (kinds[k].type == BPF_MAP_TYPE_LPM_TRIE)
            key2[0] = 16, key2[4] = 1, key2[5] = 2;
        else
            key2[0] = 2;
        if (!hashed) {
            op("update second", BPF_MAP_UPDATE_ELEM, fd, kinds[k].key ? key2 : NULL, value, NULL, BPF_ANY);
            __u64 at = batch("lookup batch of 1", BPF_MAP_LOOKUP_BATCH, fd, 1, NULL);
            batch("lookup batch after it", BPF_MAP_LOOKUP_BATCH, fd, 16, &at);
        }
        batch("lookup and delete batch", BPF_MAP_LOOKUP_AND_DELETE_BATCH, fd, 1, NULL);
        op("delete (missing)", BPF_MAP_DELETE_ELEM, fd, kinds[k].key ? missing : NULL, NULL, NULL, 0);
        op("lookup and delete (present)", BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, no_key, value, NULL, 0);
        op("update any again", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_ANY);
        op("delete (present)", BPF_MAP_DELETE_ELEM, fd, no_key, NULL, NULL, 0);
        op("lookup after delete", BPF_MAP_LOOKUP_ELEM, fd, no_key, value, NULL, 0);
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.map_fd = fd;
        printf("  freeze: %s\n", result(sys_bpf(BPF_MAP_FREEZE, &a)));
        op("update after freeze", BPF_MAP_UPDATE_ELEM, fd, no_key, value, NULL, BPF_ANY);
        op("lookup after freeze", BPF_MAP_LOOKUP_ELEM, fd, no_key, value, NULL, 0);
        op("delete after freeze", BPF_MAP_DELETE_ELEM, fd, no_key, NULL, NULL, 0);
        op("lookup and delete after freeze", BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, no_key, value, NULL, 0);
        // (EPERM since 6.5, which checks the write permission a frozen map lacks first.)
        if (kernel_at_least(6, 5))
            printf("  freeze again: %s\n", result(sys_bpf(BPF_MAP_FREEZE, &a)));
        close(fd);
    }
    return 0;
}
