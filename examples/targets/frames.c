// A call chain built with frame pointers, for user stack walks: main -> run -> outer ->
// inner/leaf. outer begins with `push %rbp`; inner and leaf are leaves without a frame of
// their own. Usage: frames N [wait]   (with `wait`, reads one byte from stdin first)
#pragma GCC optimize("no-omit-frame-pointer")
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) int inner(int a) {
    asm volatile("");
    return a * 3 + 1;
}

__attribute__((noinline)) int leaf(int a) {
    asm volatile("");
    return a + 1;
}

__attribute__((noinline)) int outer(int a) {
    int r = inner(a) + leaf(a);
    asm volatile("");
    return r + inner(r);
}

__attribute__((noinline)) long run(int n) {
    long t = 0;
    for (int i = 0; i < n; i++) {
        t += outer(i);
    }
    asm volatile("");
    return t;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    printf("%ld\n", run(n));
    return 0;
}
