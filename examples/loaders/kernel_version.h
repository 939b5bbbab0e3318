// For the loaders that compare their answers with the kernel's where those changed over kernel
// versions.
#include <stdio.h>
#include <sys/utsname.h>

// Whether the running kernel is at least MAJOR.MINOR (what it answers changed over versions).
static int kernel_at_least(int major, int minor)
{
    struct utsname u;
    int ma = 0, mi = 0;
    if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
        return 0;
    return ma > major || (ma == major && mi >= minor);
}
