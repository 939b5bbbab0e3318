// A library with a `syscall` instruction of its own, padding after it (for
// examples/targets/reloads.c).
long plugin_getpid(void)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(39L) : "rcx", "r11", "memory");
    return r;
}

// Aligned far enough that padding follows plugin_getpid: room for the rewritten site's jump.
__attribute__((aligned(64))) void plugin_filler(void)
{
}
