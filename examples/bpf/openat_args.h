// The records of the sys_enter_openat and sys_exit_openat tracepoints (their `format` files:
// the common header, the call's number, then its arguments or its result).
#pragma once
#include <linux/types.h>

struct enter_args {
    __u64 common;
    __s64 nr;
    __s64 dfd;
    const char *filename;
    __s64 flags;
    __s64 mode;
};

struct exit_args {
    __u64 common;
    __s64 nr;
    __s64 ret;
};
