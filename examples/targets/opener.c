// A library the `opens` target loads with dlopen after start: its own `syscall` instruction
// (a site that did not exist when the agent started) opens a file.
// Build: cc -O2 -shared -fPIC opener.c -o libopener.so
#include <fcntl.h>
#include <sys/syscall.h>

long opener_openat(const char *path)
{
    long ret;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_openat), "D"((long)AT_FDCWD), "S"(path), "d"((long)O_RDONLY), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}
