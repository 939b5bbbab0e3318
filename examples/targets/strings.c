// A target for bpf_probe_read_user_str: calls take() on strings laid out to show exactly what
// the helper copies (garbage after the NUL, every length around the 8-byte words and the
// 16-byte destination, unaligned starts, strings that end at an unreadable page, bad pointers).
// Usage: strings [wait]   (with `wait`, reads one byte from stdin first, so that a loader can
// attach to the running process)
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile const char *last;
static volatile long calls;

// Long enough for a 5-byte jump at its entry.
__attribute__((noinline)) void take(const char *s)
{
    last = s;
    calls++;
}

static char buf[64];

static void take_bytes(const char *bytes, size_t len, size_t at)
{
    memset(buf, '#', sizeof buf);
    memcpy(buf + at, bytes, len);
    take(buf + at);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    // Same string, different bytes after its NUL: one map key in the kernel.
    take_bytes("abc\0XXXXXXXXXXXXXXXXXXXX", 24, 0);
    take_bytes("abc\0YYYYYYYYYYYYYYYYYYYY", 24, 0);
    take("");
    take("0123456");
    take("01234567");
    take("012345678");
    take("0123456789abcde");
    take("0123456789abcdef");
    take("0123456789abcdefghijklmnop");
    for (size_t at = 1; at < 8; at++)
        take_bytes("hello\0GARBAGEGARBAGEGARB", 24, at);
    // Strings at the end of a readable page, the next one unreadable.
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + 4096, 4096, PROT_NONE) != 0)
        return 3;
    memcpy(p + 4096 - 4, "xyz", 4);
    take(p + 4096 - 4);
    memcpy(p + 4096 - 12, "0123456789a", 12);
    take(p + 4096 - 12);
    memcpy(p + 4096 - 3, "xyz", 3); // no NUL before the unreadable page
    take(p + 4096 - 3);
    take(p + 4096);
    take(NULL);
    return 0;
}
