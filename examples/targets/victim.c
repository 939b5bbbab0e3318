// A target whose output shows whether a probe wrote into its memory: it prints a string it
// passes to show(). Used to check that a region written by another user is never used.
#include <stdio.h>

static char message[32] = "untouched";
static volatile const char *last;

__attribute__((noinline)) void show(const char *s)
{
    last = s;
    puts(s);
}

int main(void)
{
    show(message);
    return 0;
}
