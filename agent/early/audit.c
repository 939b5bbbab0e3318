// libbpftime_audit.so: records the system calls the dynamic loader makes while it loads the
// program's libraries, before any code of the agent can run, so that the agent can run the
// system call programs on them afterwards, as the kernel ran them (opensnoop shows the loader's
// opens of ld.so.cache and of each library; syscount counts them).
//
// `bpftime start` / `run` name it in LD_AUDIT. The loader loads an audit library before the
// program's libraries and calls its la_version; from there until la_preinit (everything loaded
// and relocated, before any constructor) Syscall User Dispatch sends each system call made
// outside this library's code here as SIGSYS: it is made from here and recorded (number,
// arguments, result, and the path of those that take one, as it was then). The agent's start
// (the first constructor after libc's) takes over: it turns dispatch off (its prctl comes here:
// recording stops and the call is made again with dispatch off), finds the record in this library's data (`/proc/self/maps`, the
// magic; the loader does not let other namespaces look up an audit library's symbols), gives
// SIGSYS its disposition back from the record and replays the calls (agent/src/loader_calls.rs).
// Where no agent starts, la_preinit (called before the program's own constructors) does that.
//
// It is loaded into a namespace of its own and uses no C library: system calls are made
// directly; everything runs in the section `bpftime_audit_text`, the range dispatch lets
// through. Nothing here may call a function the compiler would take from libc (memcpy).

#define AT_TEXT __attribute__((section("bpftime_audit_text"), used, noinline))
#define AT_TEXT_INLINE __attribute__((section("bpftime_audit_text"), always_inline)) inline

enum {
    SYS_RT_SIGACTION = 13,
    SYS_RT_SIGPROCMASK = 14,
    SYS_RT_SIGRETURN = 15,
    SIG_BLOCK = 0,
    SIG_UNBLOCK = 1,
    SYS_PRCTL = 157,
    SIGSYS = 31,
    SA_SIGINFO = 4,
    SA_RESTORER = 0x04000000,
    PR_SET_SYSCALL_USER_DISPATCH = 59,
    PR_SYS_DISPATCH_OFF = 0,
    PR_SYS_DISPATCH_ON = 1,
    // ucontext_t: its mcontext's general registers start at byte 40 (glibc's REG_* order).
    UC_GREGS = 40,
    REG_R8 = 0,
    REG_R9 = 1,
    REG_R10 = 2,
    REG_RDI = 8,
    REG_RSI = 9,
    REG_RDX = 12,
    REG_RAX = 13,
    REG_RIP = 16,
    // ucontext_t: the signal mask sigreturn puts back, at byte 296.
    UC_SIGMASK = 296,
    // siginfo_t of a SIGSYS: the call's number at byte 24.
    SI_SYSCALL = 24,
};

// What one call was. `path` is the offset of the copy of its path argument in `strings` + 1
// (0: none); `path_arg` which argument that is.
struct record {
    long nr, args[6], ret;
    unsigned int path, path_arg;
};

#define RECORDS 1024
#define STRINGS 65536
#define PATH_MAX_KEPT 4096

struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    unsigned long mask;
};

// The record the agent reads. Layout shared with agent/src/loader_calls.rs. `dispatching`: set
// while dispatch is on and SIGSYS ours (whoever turns it off clears it and puts `previous`
// back); `done`: the record is complete.
struct log {
    char magic[16];
    unsigned int version, count, lost, strings_used;
    unsigned int done, dispatching;
    // Whether SIGSYS was blocked (a mask inherited across execve): a blocked SIGSYS from
    // dispatch kills the process, so it is unblocked meanwhile and blocked again after.
    unsigned int sigsys_blocked, pad;
    struct kernel_sigaction previous;
    struct record records[RECORDS];
    char strings[STRINGS];
};

__attribute__((visibility("default"))) struct log bpftime_audit_log = { .magic = "bpftime-audit", .version = 3 };

extern char __start_bpftime_audit_text[] __attribute__((visibility("hidden")));
extern char __stop_bpftime_audit_text[] __attribute__((visibility("hidden")));

AT_TEXT static long raw_syscall(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
    return ret;
}

// The signal handler's return (SA_RESTORER): rt_sigreturn from inside the allowed range.
__attribute__((section("bpftime_audit_text"), used, naked)) static void restore(void)
{
    __asm__ volatile("mov $15, %eax\n\tsyscall\n\thlt");
}

// Which argument of call `nr` is a path (x86-64 numbers), or -1.
AT_TEXT_INLINE static int path_argument(long nr)
{
    switch (nr) {
    case 2: // open
    case 4: // stat
    case 6: // lstat
    case 21: // access
    case 89: // readlink
    case 137: // statfs
        return 0;
    case 257: // openat
    case 262: // newfstatat
    case 269: // faccessat
    case 332: // statx
    case 439: // faccessat2
    case 437: // openat2
        return 1;
    default:
        return -1;
    }
}

#define SIGSYS_BIT (1ul << (SIGSYS - 1))

// Dispatch off and SIGSYS as it was (its disposition, and whether it is blocked: in the mask
// the SIGSYS handler running now, if any (`context`), returns to); the record is complete.
AT_TEXT static void stop(struct log *log, void *context)
{
    if (log->dispatching) {
        raw_syscall(SYS_PRCTL, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0, 0);
        raw_syscall(SYS_RT_SIGACTION, SIGSYS, (long)&log->previous, 0, 8, 0, 0);
        if (log->sigsys_blocked) {
            unsigned long block = SIGSYS_BIT;
            if (context)
                *(unsigned long *)((char *)context + UC_SIGMASK) |= block;
            else
                raw_syscall(SYS_RT_SIGPROCMASK, SIG_BLOCK, (long)&block, 0, 8, 0, 0);
        }
        log->dispatching = 0;
    }
    log->done = 1;
}

// Calls that cannot be made from a signal handler (a new thread or process would start in it;
// a signal return would return from it) or that change dispatch or SIGSYS: recording stops and
// the call is made again, by its own instruction, with dispatch off.
AT_TEXT_INLINE static int stops_recording(long nr, long first)
{
    switch (nr) {
    case SYS_RT_SIGRETURN:
    case 56: // clone
    case 57: // fork
    case 58: // vfork
    case 59: // execve
    case 322: // execveat
    case 435: // clone3
        return 1;
    case SYS_RT_SIGACTION:
        return first == SIGSYS;
    case SYS_PRCTL:
        return first == PR_SET_SYSCALL_USER_DISPATCH;
    default:
        return 0;
    }
}

AT_TEXT static void on_sigsys(int sig, void *info, void *context)
{
    (void)sig;
    long nr = *(int *)((char *)info + SI_SYSCALL);
    long *g = (long *)((char *)context + UC_GREGS);
    long a[6] = { g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9] };
    struct log *log = &bpftime_audit_log;
    if (stops_recording(nr, a[0])) {
        stop(log, context);
        // Back to the `syscall` instruction (2 bytes), its number in rax again.
        g[REG_RIP] -= 2;
        g[REG_RAX] = nr;
        return;
    }
    unsigned int path = 0;
    int which = path_argument(nr);
    // The path as the call reads it (before it is made: a buffer may be reused after).
    if (which >= 0 && log->count < RECORDS && a[which]) {
        const volatile char *s = (const char *)a[which];
        unsigned int at = log->strings_used, n = 0;
        while (n < PATH_MAX_KEPT && at + n + 1 < STRINGS && s[n])
            n++;
        if (at + n + 1 < STRINGS) {
            volatile char *to = log->strings + at;
            for (unsigned int i = 0; i < n; i++)
                to[i] = s[i];
            to[n] = 0;
            log->strings_used = at + n + 1;
            path = at + 1;
        }
    }
    long ret = raw_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    g[REG_RAX] = ret;
    if (log->count < RECORDS) {
        struct record *r = &log->records[log->count];
        r->nr = nr;
        for (int i = 0; i < 6; i++)
            r->args[i] = a[i];
        r->ret = ret;
        r->path = path;
        r->path_arg = which < 0 ? 0 : (unsigned int)which;
        log->count++;
    } else {
        log->lost++;
    }
}

// Called by the dynamic loader first: SIGSYS handled here, dispatch on for every call made
// outside this library's code. Anything that fails leaves the process as it was.
AT_TEXT unsigned int la_version(unsigned int version)
{
    struct kernel_sigaction act = { (void *)on_sigsys, SA_SIGINFO | SA_RESTORER, (void *)restore, 0 };
    struct log *log = &bpftime_audit_log;
    if (raw_syscall(SYS_RT_SIGACTION, SIGSYS, (long)&act, (long)&log->previous, 8, 0, 0) != 0)
        return version;
    long start = (long)__start_bpftime_audit_text, len = (long)(__stop_bpftime_audit_text - __start_bpftime_audit_text);
    unsigned long unblock = SIGSYS_BIT, old = 0;
    if (raw_syscall(SYS_RT_SIGPROCMASK, SIG_UNBLOCK, (long)&unblock, (long)&old, 8, 0, 0) != 0) {
        raw_syscall(SYS_RT_SIGACTION, SIGSYS, (long)&log->previous, 0, 8, 0, 0);
        return version;
    }
    log->sigsys_blocked = (old & SIGSYS_BIT) != 0;
    if (raw_syscall(SYS_PRCTL, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, start, len, 0, 0) == 0) {
        log->dispatching = 1;
    } else {
        raw_syscall(SYS_RT_SIGACTION, SIGSYS, (long)&log->previous, 0, 8, 0, 0);
        if (log->sigsys_blocked)
            raw_syscall(SYS_RT_SIGPROCMASK, SIG_BLOCK, (long)&unblock, 0, 8, 0, 0);
    }
    return version;
}

// Called after the libraries' constructors, before the program's own: where no agent took
// over, dispatch off and SIGSYS as it was (an agent that took over may have dispatch and a
// SIGSYS handler of its own by now: they stay).
AT_TEXT void la_preinit(unsigned long *cookie)
{
    (void)cookie;
    stop(&bpftime_audit_log, 0);
}
