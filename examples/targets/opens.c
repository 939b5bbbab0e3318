// A target for system call programs: opens a marker file N times each through libc's open(),
// through syscall(SYS_openat, ...) and through an inline `syscall` instruction, from a second
// thread N more times, in a forked child N more times, and N times through a library loaded
// with dlopen (libopener.so, next to this program); then checks that a read interrupted by a
// signal behaves as without tracing (EINTR without SA_RESTART, restarted with it). Marker files
// are /tmp/bpftime-open-marker-PID.
// Usage: opens N   (prints "opened OPENS interrupted EINTR restarted BYTES"; exits 1 on error)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static char marker[64];
static long n;

static long inline_openat(const char *path)
{
    long ret;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_openat), "D"((long)AT_FDCWD), "S"(path), "d"((long)O_RDONLY), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

static long open_all(void)
{
    long ok = 0;
    for (long i = 0; i < n; i++) {
        int a = open(marker, O_RDONLY);
        long b = syscall(SYS_openat, AT_FDCWD, marker, O_RDONLY);
        long c = inline_openat(marker);
        ok += (a >= 0) + (b >= 0) + (c >= 0);
        close(a);
        close((int)b);
        close((int)c);
    }
    return ok;
}

// N opens through libopener.so's own `syscall` instruction; -1 if it cannot be loaded.
static long open_through_library(void)
{
    char lib[4096];
    ssize_t len = readlink("/proc/self/exe", lib, sizeof lib - 32);
    if (len <= 0)
        return -1;
    lib[len] = 0;
    strcpy(strrchr(lib, '/') + 1, "libopener.so");
    void *h = dlopen(lib, RTLD_NOW);
    long (*opener)(const char *) = h ? (long (*)(const char *))dlsym(h, "opener_openat") : NULL;
    if (!opener)
        return -1;
    long ok = 0;
    for (long i = 0; i < n; i++) {
        long fd = opener(marker);
        ok += fd >= 0;
        close((int)fd);
    }
    return ok;
}

static void *thread_main(void *arg)
{
    *(long *)arg = open_all();
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
}

// A read from an empty pipe, interrupted by SIGALRM after 20 ms: -1/EINTR without SA_RESTART;
// with SA_RESTART it is restarted and gets the byte a second timer's handler writes.
static int pipe_fds[2];
static void on_alarm_write(int sig)
{
    (void)sig;
    if (write(pipe_fds[1], "x", 1) != 1)
        _exit(3);
}

static int interrupted_read(int restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = restart ? on_alarm_write : on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    if (pipe(pipe_fds) != 0)
        return -2;
    struct itimerval t = {.it_value = {.tv_sec = 0, .tv_usec = 20000}};
    setitimer(ITIMER_REAL, &t, NULL);
    char c;
    long r = read(pipe_fds[0], &c, 1);
    int e = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return r < 0 ? -e : (int)r;
}

int main(int argc, char **argv)
{
    n = argc > 1 ? atol(argv[1]) : 10;
    snprintf(marker, sizeof marker, "/tmp/bpftime-open-marker-%d", getpid());
    int fd = open(marker, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd < 0)
        return 1;
    close(fd);
    long opened = open_all();
    pthread_t t;
    long in_thread = 0;
    pthread_create(&t, NULL, thread_main, &in_thread);
    pthread_join(t, NULL);
    opened += in_thread;
    pid_t child = fork();
    if (child == 0)
        _exit(open_all() == 3 * n ? 0 : 1);
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        opened += 3 * n;
    opened += open_through_library();
    int interrupted = interrupted_read(0);
    int restarted = interrupted_read(1);
    unlink(marker);
    printf("opened %ld interrupted %s restarted %d\n", opened, interrupted == -EINTR ? "EINTR" : "other", restarted);
    return opened == 10 * n && interrupted == -EINTR && restarted == 1 ? 0 : 1;
}
