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
// (the constructor of libbpftime_early.so, which runs before those of the program's libraries)
// takes over: it turns dispatch off (its prctl comes here:
// recording stops and the call is made again with dispatch off; libraries a library of the
// program needs may have run their constructors before it, under the record), finds the record in this library's data (`/proc/self/maps`, the
// magic; the loader does not let other namespaces look up an audit library's symbols), gives
// SIGSYS its disposition back from the record and replays the calls (agent/src/loader_calls.rs).
// Where no agent starts, la_preinit (called after every constructor, before `main`) does that.
//
// It is loaded into a namespace of its own and uses no C library: system calls are made
// directly; everything runs in the section `bpftime_audit_text`, the range dispatch lets
// through (renamed `.text` once linked, for debuggers: see build.rs). Nothing here may call a function the compiler would take from libc (memcpy).

#define AT_TEXT __attribute__((section("bpftime_audit_text"), used, noinline))
#define AT_TEXT_INLINE __attribute__((section("bpftime_audit_text"), always_inline)) inline

enum {
    SYS_READ = 0,
    SYS_OPEN = 2,
    SYS_CLOSE = 3,
    SYS_RT_SIGACTION = 13,
    SYS_RT_SIGPROCMASK = 14,
    SYS_RT_SIGRETURN = 15,
    SYS_GETPID = 39,
    SYS_RT_SIGPENDING = 127,
    SYS_SIGALTSTACK = 131,
    SYS_PRCTL = 157,
    SYS_GETTID = 186,
    SYS_TGKILL = 234,
    SYS_PROCESS_VM_READV = 310,
    SYS_PROCESS_VM_WRITEV = 311,
    SIG_BLOCK = 0,
    SIG_UNBLOCK = 1,
    SIG_SETMASK = 2,
    SIGKILL = 9,
    SIGSTOP = 19,
    SIGSYS = 31,
    EFAULT = 14,
    EINVAL = 22,
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
    // siginfo_t: si_code at byte 8; for a SIGSYS the call's number at 24, its ABI at 28.
    SI_CODE = 8,
    SI_SYSCALL = 24,
    SI_ARCH = 28,
    SYS_USER_DISPATCH = 2,
};
#define AUDIT_ARCH_X86_64 0xC000003Eu

// What one call was. `path` is the offset of the copy of its path argument in `strings` + 1
// (0: none); `path_arg` which argument that is.
struct record {
    long nr, args[6], ret;
    unsigned int path, path_arg;
};

#define RECORDS 4096
#define STRINGS 262144
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
    unsigned int sigsys_blocked, pid;
    struct kernel_sigaction previous;
    struct record records[RECORDS];
    char strings[STRINGS];
};

__attribute__((visibility("default"))) struct log bpftime_audit_log = { .magic = "bpftime-audit", .version = 4 };

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
#define BIT(sig) (1ul << ((sig) - 1))

struct iovec {
    void *base;
    unsigned long len;
};

// Copies `n` bytes between this process's memory and ours without faulting on a bad pointer
// (process_vm_readv/writev on itself): the bytes copied, or a negative error.
AT_TEXT static long copy_in(void *to, const void *from, unsigned long n)
{
    struct iovec local = { to, n }, remote = { (void *)from, n };
    return raw_syscall(SYS_PROCESS_VM_READV, bpftime_audit_log.pid, (long)&local, 1, (long)&remote, 1, 0);
}

AT_TEXT static long copy_out(void *to, const void *from, unsigned long n)
{
    struct iovec local = { (void *)from, n }, remote = { to, n };
    return raw_syscall(SYS_PROCESS_VM_WRITEV, bpftime_audit_log.pid, (long)&local, 1, (long)&remote, 1, 0);
}

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
// a signal return would return from it; the handler's return would undo a new signal stack)
// or that change dispatch or SIGSYS: recording stops and the call is made again, by its own
// instruction, with dispatch off.
AT_TEXT_INLINE static int stops_recording(long nr, long first)
{
    switch (nr) {
    case SYS_RT_SIGRETURN:
    case SYS_SIGALTSTACK:
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

// rt_sigprocmask, on the mask the handler returns to (made here, the handler's return would
// undo it); SIGSYS stays unblocked while dispatch is on, but the application sees it as it
// asked, and gets it so when recording stops.
AT_TEXT static long sigprocmask_in(struct log *log, void *context, const long *a)
{
    unsigned long *mask = (unsigned long *)((char *)context + UC_SIGMASK);
    unsigned long seen = log->sigsys_blocked ? (*mask | SIGSYS_BIT) : (*mask & ~SIGSYS_BIT), set = 0;
    if (a[3] != 8)
        return -EINVAL;
    if (a[1] && copy_in(&set, (const void *)a[1], 8) != 8)
        return -EFAULT;
    if (a[1] && a[0] != SIG_BLOCK && a[0] != SIG_UNBLOCK && a[0] != SIG_SETMASK)
        return -EINVAL;
    if (a[2] && copy_out((void *)a[2], &seen, 8) != 8)
        return -EFAULT;
    if (a[1]) {
        unsigned long next = a[0] == SIG_BLOCK ? (seen | set) : a[0] == SIG_UNBLOCK ? (seen & ~set) : set;
        next &= ~(BIT(SIGKILL) | BIT(SIGSTOP));
        log->sigsys_blocked = (next & SIGSYS_BIT) != 0;
        *mask = next & ~SIGSYS_BIT;
    }
    return 0;
}

// The path argument at `from` copied into the record's strings (up to PATH_MAX_KEPT bytes, a
// page at a time, never faulting): its offset + 1, or 0 when it cannot be read or there is no
// room.
AT_TEXT static unsigned int keep_path(struct log *log, const char *from)
{
    unsigned int at = log->strings_used;
    if (at + 1 >= STRINGS)
        return 0;
    unsigned long room = STRINGS - at - 1, got = 0;
    if (room > PATH_MAX_KEPT)
        room = PATH_MAX_KEPT;
    char *to = log->strings + at;
    while (got < room) {
        unsigned long chunk = 4096 - (((unsigned long)from + got) & 4095);
        if (chunk > room - got)
            chunk = room - got;
        long n = copy_in(to + got, from + got, chunk);
        if (n <= 0)
            break;
        for (long i = 0; i < n; i++) {
            if (to[got + i] == 0) {
                log->strings_used = at + got + i + 1;
                return at + 1;
            }
        }
        got += n;
        if ((unsigned long)n < chunk)
            break;
    }
    if (got == 0)
        return 0;
    to[got] = 0;
    log->strings_used = at + got + 1;
    return at + 1;
}

AT_TEXT static void on_sigsys(int sig, void *info, void *context)
{
    (void)sig;
    long nr = *(int *)((char *)info + SI_SYSCALL);
    long *g = (long *)((char *)context + UC_GREGS);
    long a[6] = { g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9] };
    struct log *log = &bpftime_audit_log;
    // A SIGSYS that dispatch did not send (seccomp, kill): recording stops and it is sent
    // again, to be taken as the application would have taken it.
    if (*(int *)((char *)info + SI_CODE) != SYS_USER_DISPATCH || *(unsigned int *)((char *)info + SI_ARCH) != AUDIT_ARCH_X86_64) {
        stop(log, context);
        raw_syscall(SYS_TGKILL, log->pid, raw_syscall(SYS_GETTID, 0, 0, 0, 0, 0, 0), SIGSYS, 0, 0, 0);
        return;
    }
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
    if (which >= 0 && log->count < RECORDS && a[which])
        path = keep_path(log, (const char *)a[which]);
    long ret = nr == SYS_RT_SIGPROCMASK ? sigprocmask_in(log, context, a) : raw_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
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

// Whether a debugger or tracer is attached (`TracerPid:` in /proc/self/status not 0): it
// would stop at every SIGSYS.
AT_TEXT static int traced(void)
{
    static const char file[] = "/proc/self/status", key[] = "TracerPid:";
    char buf[4096];
    long fd = raw_syscall(SYS_OPEN, (long)file, 0, 0, 0, 0, 0);
    if (fd < 0)
        return 0;
    long n = raw_syscall(SYS_READ, fd, (long)buf, sizeof buf - 1, 0, 0, 0);
    raw_syscall(SYS_CLOSE, fd, 0, 0, 0, 0, 0);
    for (long i = 0; i + (long)sizeof key < n; i++) {
        long k = 0;
        while (k < (long)sizeof key - 1 && buf[i + k] == key[k])
            k++;
        if (k == (long)sizeof key - 1) {
            long j = i + k;
            while (j < n && (buf[j] == '\t' || buf[j] == ' '))
                j++;
            return j < n && buf[j] != '0';
        }
    }
    return 0;
}

// Whether the process runs under Valgrind, which makes the program's system calls from code of
// its own (outside any range dispatch lets through: the first would kill it with SIGSYS). The
// request Valgrind's client requests use (`RUNNING_ON_VALGRIND`, 0x1001): a sequence of
// rotations of rdi that leaves it as it was and an `xchg rbx, rbx`, which natively do nothing
// (rdx keeps its 0), and under Valgrind answer the request in rdx.
AT_TEXT static int under_valgrind(void)
{
    volatile unsigned long request[6] = { 0x1001, 0, 0, 0, 0, 0 };
    unsigned long answer = 0;
    __asm__ volatile("rolq $3, %%rdi\n\trolq $13, %%rdi\n\trolq $61, %%rdi\n\trolq $51, %%rdi\n\txchgq %%rbx, %%rbx"
                     : "+d"(answer)
                     : "a"(&request[0])
                     : "cc", "memory", "rdi");
    return answer != 0;
}

// Called by the dynamic loader first: SIGSYS handled here, dispatch on for every call made
// outside this library's code. Anything that fails leaves the process as it was; so does a
// tracer, Valgrind, or a SIGSYS pending already.
AT_TEXT unsigned int la_version(unsigned int version)
{
    struct kernel_sigaction act = { (void *)on_sigsys, SA_SIGINFO | SA_RESTORER, (void *)restore, 0 };
    struct log *log = &bpftime_audit_log;
    unsigned long pending = 0;
    if (under_valgrind() || raw_syscall(SYS_RT_SIGPENDING, (long)&pending, 8, 0, 0, 0, 0) != 0 || (pending & SIGSYS_BIT) || traced())
        return version;
    log->pid = (unsigned int)raw_syscall(SYS_GETPID, 0, 0, 0, 0, 0, 0);
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

// Called after every constructor (the program's too), before `main`: where no agent took over,
// dispatch off and SIGSYS as it was (an agent that took over may have dispatch and a SIGSYS
// handler of its own by now: they stay).
AT_TEXT void la_preinit(unsigned long *cookie)
{
    (void)cookie;
    stop(&bpftime_audit_log, 0);
}
