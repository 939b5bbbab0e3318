// A target for name-resolution tracing (libbpf-tools' gethostlatency): after a second (time for
// a tool to attach), resolves "localhost" N times with getaddrinfo. Usage: resolve [N]
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 3;
    sleep(1);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        struct addrinfo *r = 0;
        if (getaddrinfo("localhost", "80", 0, &r) == 0) {
            ok++;
            freeaddrinfo(r);
        }
    }
    printf("%d of %d resolved\n", ok, n);
    return 0;
}
