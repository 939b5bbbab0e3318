// bpf_for_each_map_elem over a hash map and an array, bpf_jiffies64, the ancestors' cgroup ids
// and the TAI clock, on the `calls` target's add(a, b), in count_calls's interface (`uprobe/FUNC`
// sections, results in `stats`): loaded by the same libbpf loader on the kernel and under
// bpftime, the maps must agree.
//
// Each call counts its `a % 32` in `by_arg` (a hash) and adds `a` to `slots[a % 16]`, then walks
// both: the hash walk sums keys and values, bumps every value through the value pointer and
// deletes the elements whose value passed 40 (so the map's contents depend on every walk
// before); the array walk stops after `ARRAY_STOP` elements.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} by_arg SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} slots SEC(".maps");

enum {
    HASH_SEEN,      // elements the last hash walk saw (its return value)
    HASH_KEYS,      // sum over all walks of the keys seen
    HASH_VALUES,    // sum over all walks of the values seen
    HASH_DELETED,   // elements deleted from inside the walk
    ARRAY_SEEN,     // the last array walk's return value
    ARRAY_KEYS,     // sum over all array walks of the indexes seen
    ARRAY_VALUES,   // sum over all array walks of the values seen
    JIFFIES_FIRST,  // bpf_jiffies64() at the first call
    JIFFIES_LAST,   // ... and at the last
    TAI_MINUS_MONO, // bpf_ktime_get_tai_ns() - bpf_ktime_get_ns() at the last call
    CGROUP_0,       // bpf_get_current_ancestor_cgroup_id(0..5)
    CGROUP = CGROUP_0 + 6, // bpf_get_current_cgroup_id()
    RESULTS,
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, RESULTS);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

#define ARRAY_STOP 5

struct walk {
    __u64 keys;
    __u64 values;
    __u64 seen;
    __u64 deleted;
};

// The walks' totals as structs (0: the hash walks, 1: the array walks): what bpftool's dump
// formats from the map's BTF.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, struct walk);
} walk_totals SEC(".maps");

static __always_inline void total(__u32 k, struct walk *w)
{
    struct walk *t = bpf_map_lookup_elem(&walk_totals, &k);
    if (t) {
        t->keys += w->keys;
        t->values += w->values;
        t->seen += w->seen;
        t->deleted += w->deleted;
    }
}

static __always_inline void add_to(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p += v;
}

static __always_inline void set(__u32 k, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&stats, &k);
    if (p)
        *p = v;
}

static long visit_hash(void *map, __u32 *key, __u64 *value, struct walk *w)
{
    w->keys += *key;
    w->values += *value;
    w->seen++;
    *value += 1;
    if (*value > 40) {
        bpf_map_delete_elem(map, key);
        w->deleted++;
    }
    return 0;
}

static long visit_array(void *map, __u32 *key, __u64 *value, struct walk *w)
{
    w->keys += *key;
    w->values += *value;
    w->seen++;
    // On the key, not on `seen`: the kernel's verifier runs the callback as a loop, and a
    // branch on a counter it knows exactly would never let it converge.
    return *key + 1 >= ARRAY_STOP;
}

SEC("uprobe/add")
int BPF_KPROBE(on_add, unsigned long a, long b)
{
    __u32 k = a % 32;
    __u64 one = 1, *v = bpf_map_lookup_elem(&by_arg, &k);
    if (v)
        *v += 1;
    else
        bpf_map_update_elem(&by_arg, &k, &one, BPF_NOEXIST);
    k = a % 16;
    v = bpf_map_lookup_elem(&slots, &k);
    if (v)
        *v += a;

    struct walk h = {}, arr = {};
    long n = bpf_for_each_map_elem(&by_arg, visit_hash, &h, 0);
    set(HASH_SEEN, n);
    add_to(HASH_KEYS, h.keys);
    add_to(HASH_VALUES, h.values);
    add_to(HASH_DELETED, h.deleted);
    n = bpf_for_each_map_elem(&slots, visit_array, &arr, 0);
    set(ARRAY_SEEN, n);
    total(0, &h);
    total(1, &arr);
    add_to(ARRAY_KEYS, arr.keys);
    add_to(ARRAY_VALUES, arr.values);

    __u32 first = JIFFIES_FIRST;
    __u64 *j = bpf_map_lookup_elem(&stats, &first);
    if (j && *j == 0)
        *j = bpf_jiffies64();
    set(JIFFIES_LAST, bpf_jiffies64());
    set(TAI_MINUS_MONO, bpf_ktime_get_tai_ns() - bpf_ktime_get_ns());
    for (int level = 0; level < 6; level++)
        set(CGROUP_0 + level, bpf_get_current_ancestor_cgroup_id(level));
    set(CGROUP, bpf_get_current_cgroup_id());
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
