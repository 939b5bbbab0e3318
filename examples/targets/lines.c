// A target whose function returns strings, as readline does: next_line(i) returns "line I"
// (a different length each time). Usage: lines N   (prints how many characters it produced)
#include <stdio.h>
#include <stdlib.h>

static char buf[64];

__attribute__((noinline)) const char *next_line(int i)
{
    snprintf(buf, sizeof buf, "line %d%s", i, i % 3 == 0 ? " (three)" : "");
    return buf;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10;
    long chars = 0;
    for (int i = 0; i < n; i++) {
        const char *s = next_line(i);
        while (*s++)
            chars++;
    }
    printf("%ld characters\n", chars);
    return 0;
}
