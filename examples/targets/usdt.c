// A target with a USDT probe (systemtap's sys/sdt.h, as applications ship them):
// bpftime:tick(i, 2 * i) fires N times. Usage: usdt N [wait]   (with `wait`, reads one byte
// from stdin first)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    long sum = 0;
    for (long i = 0; i < n; i++) {
        DTRACE_PROBE2(bpftime, tick, i, 2 * i);
        sum += i;
    }
    printf("%ld ticks, sum %ld\n", n, sum);
    return 0;
}
