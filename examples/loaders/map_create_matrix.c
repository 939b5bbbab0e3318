// Creates maps of every type bpftime keeps in its region, with each map flag in turn and with
// good and bad names, straight through bpf(2), and prints what each attempt gave: the same
// lines as on the kernel, which decides what is valid. Build: cc map_create_matrix.c -o ...
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int create(__u32 type, __u32 key, __u32 value, __u32 max, __u32 flags, const char *name, size_t name_len, int inner)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key;
    a.value_size = value;
    a.max_entries = max;
    a.map_flags = flags;
    a.inner_map_fd = inner;
    memcpy(a.map_name, name, name_len);
    return syscall(__NR_bpf, BPF_MAP_CREATE, &a, sizeof(a));
}

static void attempt(__u32 type, __u32 key, __u32 value, __u32 max, __u32 flags, const char *name, size_t name_len, int inner)
{
    int fd = create(type, key, value, max, flags, name, name_len, inner);
    printf("type %u flags %#x name %.*s: %s\n", type, flags, (int)name_len, name, fd >= 0 ? "ok" : strerror(errno));
    if (fd >= 0)
        close(fd);
}

int main(void)
{
    int inner = create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, "inner", 6, 0);
    if (inner < 0) {
        perror("inner map");
        return 1;
    }
    struct { __u32 type, key, value, max, base; } kinds[] = {
        { BPF_MAP_TYPE_HASH, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_ARRAY, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 16, 0 },
        { BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, 2, 0 },
        { BPF_MAP_TYPE_PERCPU_HASH, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_STACK_TRACE, 4, 64, 16, 0 },
        { BPF_MAP_TYPE_CGROUP_ARRAY, 4, 4, 16, 0 },
        { BPF_MAP_TYPE_LRU_HASH, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_LRU_PERCPU_HASH, 4, 8, 16, 0 },
        { BPF_MAP_TYPE_LPM_TRIE, 8, 8, 16, BPF_F_NO_PREALLOC },
        { BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 16, 0 },
        { BPF_MAP_TYPE_HASH_OF_MAPS, 4, 4, 16, 0 },
        { BPF_MAP_TYPE_QUEUE, 0, 8, 16, 0 },
        { BPF_MAP_TYPE_STACK, 0, 8, 16, 0 },
        { BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0 },
        { BPF_MAP_TYPE_BLOOM_FILTER, 0, 4, 16, 0 },
    };
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        int in = kinds[k].type == BPF_MAP_TYPE_ARRAY_OF_MAPS || kinds[k].type == BPF_MAP_TYPE_HASH_OF_MAPS ? inner : 0;
        attempt(kinds[k].type, kinds[k].key, kinds[k].value, kinds[k].max, kinds[k].base, "m", 2, in);
        for (int bit = 0; bit <= 12; bit++) {
            if (1u << bit == BPF_F_NO_PREALLOC && kinds[k].base)
                continue;
            attempt(kinds[k].type, kinds[k].key, kinds[k].value, kinds[k].max, kinds[k].base | 1u << bit, "m", 2, in);
        }
        attempt(kinds[k].type, kinds[k].key, kinds[k].value, kinds[k].max, kinds[k].base | BPF_F_RDONLY | BPF_F_WRONLY, "m", 2, in);
        attempt(kinds[k].type, kinds[k].key, kinds[k].value, kinds[k].max, kinds[k].base | BPF_F_RDONLY_PROG | BPF_F_WRONLY_PROG, "m", 2, in);
    }
    attempt(BPF_MAP_TYPE_HASH, 4, 8, 16, 0, "good.name_9", 12, 0);
    attempt(BPF_MAP_TYPE_HASH, 4, 8, 16, 0, "bad-name", 9, 0);
    attempt(BPF_MAP_TYPE_HASH, 4, 8, 16, 0, "sixteen_chars_16", 16, 0);
    attempt(BPF_MAP_TYPE_HASH, 4, 8, 16, 0, "", 1, 0);
    return 0;
}
