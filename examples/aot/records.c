// A C program running eBPF programs compiled ahead of time (`bpftime aot compile`), linked in:
//
//   bpftime aot compile aot_records.bpf.o -o records.aot.o
//   cc records.c records.aot.o libbpftime_aot.a -lpthread -ldl -lm -o records
//
// It hashes records with the eBPF program and in C, and prints both, with the maps' counts.
#include "bpftime_aot.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const uint8_t *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len && i < 4096; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int main(int argc, char **argv)
{
    int records = argc > 1 ? atoi(argv[1]) : 1000;
    char err[256], why[256];
    struct bpftime_aot *aot = bpftime_aot_open(NULL, err, sizeof err);
    if (!aot) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    for (const char *name = "fnv1a";; name = "read_at") {
        int native = bpftime_aot_native(aot, name, why, sizeof why);
        printf("%s: %s\n", name, native == 1 ? "native" : native == 0 ? why : strerror(-native));
        if (!strcmp(name, "read_at"))
            break;
    }
    uint8_t buf[600];
    uint64_t bytes = 0, mismatches = 0, last = 0;
    for (int i = 0; i < records; i++) {
        size_t len = (size_t)(i * 37) % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)(i * 131 + j * 7);
        if (len > 0)
            buf[0] = (uint8_t)(i % 5);
        uint64_t r0;
        int rc = bpftime_aot_run(aot, "fnv1a", buf, len, &r0);
        if (rc != 0) {
            fprintf(stderr, "run: %s\n", strerror(-rc));
            return 1;
        }
        mismatches += r0 != fnv1a(buf, len);
        bytes += len;
        last = r0;
    }
    printf("records %d bytes %llu mismatches %llu last %016llx\n", records, (unsigned long long)bytes, (unsigned long long)mismatches,
           (unsigned long long)last);
    for (uint32_t key = 0; key < 2; key++) {
        uint64_t v = 0;
        int rc = bpftime_aot_map_lookup(aot, "totals", &key, &v);
        printf("totals[%u] = %llu (%d)\n", key, (unsigned long long)v, rc);
    }
    for (uint32_t tag = 0; tag < 6; tag++) {
        uint64_t v = 0;
        int rc = bpftime_aot_map_lookup(aot, "by_tag", &tag, &v);
        printf("by_tag[%u] = %llu (%s)\n", tag, (unsigned long long)v, rc == 0 ? "ok" : strerror(-rc));
    }
    // A fault ends the run, not the program.
    uint32_t offsets[2] = {8, 1 << 20};
    for (int i = 0; i < 2; i++) {
        uint8_t rec[16] = {0};
        memcpy(rec, &offsets[i], 4);
        rec[8] = 42;
        uint64_t r0 = 0;
        int rc = bpftime_aot_run(aot, "read_at", rec, sizeof rec, &r0);
        printf("read_at %u: rc %d r0 %llu\n", offsets[i], rc, (unsigned long long)r0);
    }
    uint64_t r0;
    printf("unknown: rc %d\n", bpftime_aot_run(aot, "nothing", buf, 0, &r0));
    printf("value size of totals: %lld\n", (long long)bpftime_aot_map_value_size(aot, "totals"));

    // A second handle has maps of its own; the compiled code serves the first, so the second
    // runs its programs in the interpreter, until the first is closed.
    struct bpftime_aot *second = bpftime_aot_open(NULL, err, sizeof err);
    if (!second) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    int native = bpftime_aot_native(second, "fnv1a", why, sizeof why);
    printf("second handle: %s\n", native == 1 ? "native" : why);
    for (int i = 0; i < 3; i++)
        bpftime_aot_run(second, "fnv1a", buf, 10, &r0);
    bpftime_aot_run(aot, "fnv1a", buf, 10, &r0);
    uint32_t zero = 0;
    uint64_t first_count = 0, second_count = 0;
    bpftime_aot_map_lookup(aot, "totals", &zero, &first_count);
    bpftime_aot_map_lookup(second, "totals", &zero, &second_count);
    printf("records: first %llu, second %llu\n", (unsigned long long)first_count, (unsigned long long)second_count);
    bpftime_aot_close(aot);
    bpftime_aot_close(second);
    struct bpftime_aot *third = bpftime_aot_open(NULL, err, sizeof err);
    native = third ? bpftime_aot_native(third, "fnv1a", why, sizeof why) : -1;
    printf("after both closed: %s\n", native == 1 ? "native" : why);
    bpftime_aot_close(third);
    return 0;
}
