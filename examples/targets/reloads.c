// Loads a library with a `syscall` instruction of its own, calls it, unloads it, three times
// (it comes back at the same address with its original bytes: a call site rewritten by system
// call interception the first time is a plain `syscall` again).
// Usage: reloads LIBRARY   (prints "round N: ok" when the library's getpid is ours)
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    for (int round = 0; round < 3; round++) {
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h)
            return 1;
        long (*f)(void) = (long (*)(void))dlsym(h, "plugin_getpid");
        long ok = 1;
        for (int i = 0; i < 5; i++)
            ok &= f() == getpid();
        printf("round %d: %s\n", round, ok ? "ok" : "wrong pid");
        dlclose(h);
    }
    return 0;
}
