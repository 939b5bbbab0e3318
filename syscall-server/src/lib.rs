//! # libbpftime_syscall_server.so: eBPF loaders load into userspace
//!
//! Preloaded into an unmodified loader (a libbpf tool, `bpftime load -- LOADER`), it answers
//! the loader's `bpf()` calls, its `perf_event_open` of uprobes and their ioctls from the
//! shared region instead of the kernel: maps, programs and links are made there, where the
//! agent in a traced process (`bpftime start`) finds and runs them. Map fds can be `mmap`ed
//! (global data of skeletons, ring buffers as libbpf's consumer reads them) and polled.
//!
//! Interposed: `syscall` (for `__NR_bpf` and `__NR_perf_event_open`), `ioctl`, `close`, `dup`,
//! `dup2`, `dup3`, `mmap`, `mmap64`, `unlink`/`unlinkat` (for pinned paths), `readlink`/`readlinkat` (for
//! `/proc/self/fd/N` of our fds) and `fopen`/`fopen64` (for the kprobe PMU's sysfs files where
//! the kernel has none, see [`pmu`]). Everything else, and every call on fds that are not ours,
//! goes to the kernel unchanged (as raw system calls, with glibc's errno convention).

/// `eprintln!` that never panics: std's panics when stderr cannot be written (a closed pipe in
/// a process that ignores SIGPIPE gives EPIPE), which inside someone else's process would end
/// our work half done or, across `extern "C"`, abort the process. A message that cannot be
/// written is dropped. (Defined before the modules, so that it is the `eprintln!` they use.)
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod attr;
mod beside;
#[cfg(test)]
mod fuzz_tests;
mod kernel;
mod pmu;
mod raw;
mod reach;
mod relay;
mod server;
mod tag;
mod user;

use server::Server;
use std::ffi::{c_char, c_int, c_long, c_ulong, c_void};
use std::sync::OnceLock;

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// Runs at load time (an `.init_array` entry): looks for the agent beside the server
/// ([`beside::find_agent`]); sets bpftime's `BPFTIME_USED`; and the programs
/// a loader starts (`bpftrace -c CMD`) are traced processes, not loaders, so they get the agent
/// in place of the server: `bpftime load` says what their `LD_PRELOAD` is in
/// `BPFTIME_CHILD_PRELOAD`.
extern "C" fn bpftime_server_init() {
    beside::find_agent();
    // bpftime's mark that a loader runs under it (its loaders pick, say, a test-runnable
    // program type for a kernel program that a uprobe tail-calls).
    if std::env::var_os("BPFTIME_USED").is_none() {
        // SAFETY: at load time, before the loader's own code runs or starts a thread.
        unsafe { std::env::set_var("BPFTIME_USED", "1") };
    }
    let Some(children) = std::env::var_os("BPFTIME_CHILD_PRELOAD") else { return };
    // SAFETY: at load time, before the loader's own code runs or starts a thread; nothing reads
    // the environment concurrently. prctl(2) PR_GET_NAME writes at most 16 bytes into the
    // 17-byte buffer.
    unsafe {
        std::env::set_var("LD_PRELOAD", children);
        std::env::remove_var("BPFTIME_CHILD_PRELOAD");
        if let Some(audit) = std::env::var_os("BPFTIME_CHILD_AUDIT") {
            std::env::set_var("LD_AUDIT", audit);
            std::env::remove_var("BPFTIME_CHILD_AUDIT");
        }
        // Their execve is made without the agent: the agent runs its entry programs, under the
        // loader's name (the caller's, which the kernel's programs see).
        let mut name = [0u8; 17];
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0);
        let len = name.iter().position(|&b| b == 0).unwrap_or(16);
        std::env::set_var("BPFTIME_EXEC_UNTRACED", <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name[..len]));
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = bpftime_server_init;

// `execve`, `posix_spawn` and kin, wrapped: a program the loader starts with the agent and its
// audit library (`bpftrace -c CMD`) gets the room for static thread-locals its libraries need.
bpftime_launch::exec_wrappers!(crate::beside::quiet);

/// The server, made on first use: the region named by `BPFTIME_SHM` (default `bpftime`),
/// created when it does not exist.
fn server() -> Option<&'static Server> {
    SERVER
        .get_or_init(|| {
            beside::quiet(|| {
                let name = bpftime_shm::default_name();
                let size = std::env::var("BPFTIME_SHM_SIZE").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(64 << 20);
                match bpftime_shm::ShmRegion::open_or_create(&name, size) {
                    Ok(r) => {
                        let s = Server::new(std::sync::Arc::new(r));
                        bpftime_runtime::threads::spawn_quiet("bpftime-rings", || beside::quiet(watch_rings)).ok();
                        // SAFETY: registers a plain extern "C" function that only stores into the
                        // region (pthread_atfork(3)).
                        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(forked_child)) };
                        Some(s)
                    }
                    Err(e) => {
                        eprintln!("bpftime: the syscall server cannot use its region: {e}; bpf() calls fail with ENOSYS");
                        None
                    }
                }
            })
        })
        .as_ref()
}

/// The server, for a call the loader makes: None before it is made, and for a call the agent
/// beside it makes for its own work ([`beside::for_the_agent`]), which goes to the kernel.
fn ours() -> Option<&'static Server> {
    if beside::for_the_agent() {
        return None;
    }
    SERVER.get().and_then(Option::as_ref)
}

/// The process that is forking (its child's parent: `getppid` in the child may already name
/// another, the parent having exited).
static FORKING: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

thread_local! {
    /// The fd table, held by the forking thread across `fork`: a child must not inherit it
    /// locked by a thread it does not have (the ring watcher takes it every few milliseconds).
    static FDS_HELD: std::cell::RefCell<Option<std::sync::MutexGuard<'static, std::collections::HashMap<i32, server::Handle>>>> = const { std::cell::RefCell::new(None) };
}

/// Before `fork`: says who forks and takes the fd table (not waiting for ever: a fork from a
/// signal handler that interrupted this thread's own use of it goes on without).
extern "C" fn before_fork() {
    beside::quiet(take_fds_for_fork)
}

/// [`before_fork`]'s work.
fn take_fds_for_fork() {
    FORKING.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    let Some(s) = SERVER.get().and_then(Option::as_ref) else { return };
    for _ in 0..100_000 {
        match s.fds.try_lock() {
            Ok(g) => {
                let _ = FDS_HELD.try_with(|h| *h.borrow_mut() = Some(g));
                return;
            }
            Err(std::sync::TryLockError::Poisoned(e)) => {
                let _ = FDS_HELD.try_with(|h| *h.borrow_mut() = Some(e.into_inner()));
                return;
            }
            Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
}

/// After `fork`, in the parent: the fd table is let go.
extern "C" fn after_fork_in_parent() {
    let _ = FDS_HELD.try_with(|h| h.borrow_mut().take());
}

/// In a child forked from the loader: the fd table is let go; the child holds copies of the
/// loader's fds, so what they name stays while it lives (a loader that forks a daemon and
/// exits); see `ShmRegion::add_heir`.
extern "C" fn forked_child() {
    let _ = FDS_HELD.try_with(|h| h.borrow_mut().take());
    if let Some(s) = SERVER.get().and_then(Option::as_ref) {
        let parent = FORKING.load(std::sync::atomic::Ordering::Relaxed);
        s.region().add_heir(parent);
        // Threads do not survive a fork: a daemon's ring fds must still turn readable. The
        // fds are the parent's too, whose watcher signals them while it lives; then this one.
        bpftime_runtime::threads::spawn_quiet("bpftime-rings", move || {
            beside::quiet(|| {
                // SAFETY: getppid(2) cannot fail. (A dead parent is no longer ours: the child was
                // handed to another, even while the dead one is a zombie.)
                while unsafe { libc::getppid() } as u32 == parent && bpftime_shm::process_alive(parent) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                watch_rings()
            })
        })
        .ok();
    }
}

/// Runs `f` without letting a panic cross into C: a panic is `EFAULT`.
fn guarded(f: impl FnOnce() -> Result<i64, i32>) -> Result<i64, i32> {
    caught(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(libc::EFAULT))
}

/// The server's work on a loader's call: its panics caught, an agent beside it silenced
/// ([`beside::quiet`]).
fn caught<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> std::thread::Result<R> {
    beside::quiet(|| std::panic::catch_unwind(f))
}

/// Keeps each ring buffer map fd readable (for `epoll`) exactly while it holds records. A
/// ring is known by its fd and its place in the region, so that a ring made on the number of
/// one closed is a new one.
fn watch_rings() {
    let mut signaled: std::collections::HashSet<(i32, u64)> = Default::default();
    loop {
        let Some(s) = SERVER.get().and_then(Option::as_ref) else {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        };
        // Woken by producers as records are published; while a ring fd is readable, every
        // 2 ms to see its reader catch up (readers do not say), else every 100 ms at most.
        let token = s.region().arm_record_wait();
        let rings = s.ring_fds();
        signaled.retain(|&(fd, at)| rings.iter().any(|&(f, consumer, _)| (f, consumer) == (fd, at)));
        for (fd, consumer, producer) in rings {
            let pos = |o: u64| s.region().atomic_u64(o).map(|a| a.load(std::sync::atomic::Ordering::Acquire)).unwrap_or(0);
            let ready = pos(producer) != pos(consumer);
            if ready && signaled.insert((fd, consumer)) {
                raw::eventfd_signal(fd, true);
            } else if !ready && signaled.remove(&(fd, consumer)) {
                raw::eventfd_signal(fd, false);
            }
        }
        let timeout = std::time::Duration::from_millis(if signaled.is_empty() { 100 } else { 2 });
        s.region().wait_for_records(token, timeout);
    }
}

fn bpf(cmd: u32, attr_addr: u64, size: u32) -> Result<i64, i32> {
    let s = server().ok_or(libc::ENOSYS)?;
    guarded(|| {
        // As the kernel's `bpf_check_uarg_tail_zero`: no attr past a page.
        if size > 4096 {
            return Err(libc::E2BIG);
        }
        let size = size as usize;
        let mut a = attr::Attr::from_bytes(user::read(attr_addr, size)?);
        let before = a.0.clone();
        let r = s.bpf(cmd, &mut a);
        if a.0[..size] != before[..size] {
            user::write(attr_addr, &a.0[..size])?;
        }
        r
    })
}

/// `perf_event_open`: a uprobe event is ours (None: the kernel's).
fn perf_event_open(attr_addr: u64, pid: i32, cpu: i32) -> Option<Result<i64, i32>> {
    let s = server()?;
    let r = caught(|| {
        let size = match user::read(attr_addr + 4, 4) {
            Ok(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Err(e) => return Some(Err(e)),
        };
        // As the kernel: 0 is the first version's 64 bytes; less than that is too small.
        let size = match size {
            0 => 64,
            1..64 => return Some(Err(libc::E2BIG)),
            n => n.min(512),
        };
        match user::read(attr_addr, size as usize) {
            Ok(bytes) => s.perf_event_open(&attr::Attr::from_bytes(bytes), pid, cpu),
            Err(e) => Some(Err(e)),
        }
    });
    r.unwrap_or(Some(Err(libc::EFAULT)))
}

/// `syscall(2)`: `__NR_bpf` and `__NR_perf_event_open` answered here, the fd calls that our
/// table follows (`dup`, `dup2`, `dup3`, `close`: libbpf moves each new map's fd onto a
/// placeholder with `syscall(__NR_dup3, ...)`) made as their interposed functions make them,
/// the rest passed on.
///
/// # Safety
/// Same contract as syscall(2) (variadic there; on x86-64 the extra arguments are in the same
/// registers as these fixed ones).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    let r = match n {
        // The agent's own calls (a kernel program a tail call runs) are the kernel's.
        libc::SYS_bpf | libc::SYS_perf_event_open if beside::for_the_agent() => raw::result(raw::syscall6(n, [a1, a2, a3, a4, a5, a6])),
        libc::SYS_bpf => bpf(a1 as u32, a2 as u64, a3 as u32),
        libc::SYS_perf_event_open => match perf_event_open(a1 as u64, a2 as i32, a3 as i32) {
            Some(r) => r,
            None => raw::result(raw::syscall6(n, [a1, a2, a3, a4, a5, a6])),
        },
        // SAFETY (the four below): the same calls through their interposed functions, which
        // set errno as this function must.
        libc::SYS_dup => return unsafe { dup(a1 as c_int) } as c_long,
        libc::SYS_dup2 => return unsafe { dup2(a1 as c_int, a2 as c_int) } as c_long,
        libc::SYS_dup3 => return unsafe { dup3(a1 as c_int, a2 as c_int, a3 as c_int) } as c_long,
        libc::SYS_close => return unsafe { close(a1 as c_int) } as c_long,
        _ => raw::result(raw::syscall6(n, [a1, a2, a3, a4, a5, a6])),
    };
    raw::to_c(r)
}

/// `ioctl(2)`: the perf ioctls on our uprobe events answered here.
///
/// # Safety
/// Same contract as ioctl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    if let Some(s) = ours() {
        if let Some(r) = caught(|| s.perf_ioctl(fd, request, arg).or_else(|| s.kernel_set_bpf(fd, request, arg))).unwrap_or(Some(Err(libc::EFAULT))) {
            return raw::to_c(r) as c_int;
        }
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_ioctl, [fd as c_long, request as c_long, arg as c_long, 0, 0, 0]))) as c_int
}

/// `close(2)`: our table forgets the fd (a link's last fd detaches it).
///
/// # Safety
/// Same contract as close(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if let Some(s) = ours() {
        let _ = caught(|| {
            if s.closed(fd) {
                s.wait_detached_here();
            }
        });
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_close, [fd as c_long, 0, 0, 0, 0, 0]))) as c_int
}

fn duplicated(old: c_int, r: Result<i64, i32>) -> c_int {
    // (`dup2(fd, fd)` leaves fd as it is.)
    if let (Ok(new), Some(s)) = (r.ok().filter(|&new| new != old as i64).ok_or(()), ours()) {
        let _ = caught(|| {
            // The fd it replaced was closed: a link's last one detaches it, as `close` does.
            if s.closed(new as i32) {
                s.wait_detached_here();
            }
            s.duplicated(old, new as i32)
        });
    }
    raw::to_c(r) as c_int
}

/// `dup(2)`.
///
/// # Safety
/// Same contract as dup(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    duplicated(fd, raw::result(raw::syscall6(libc::SYS_dup, [fd as c_long, 0, 0, 0, 0, 0])))
}

/// `dup2(2)`.
///
/// # Safety
/// Same contract as dup2(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    duplicated(fd, raw::result(raw::syscall6(libc::SYS_dup2, [fd as c_long, new as c_long, 0, 0, 0, 0])))
}

/// `dup3(2)`.
///
/// # Safety
/// Same contract as dup3(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    duplicated(fd, raw::result(raw::syscall6(libc::SYS_dup3, [fd as c_long, new as c_long, flags as c_long, 0, 0, 0])))
}

/// `fcntl(2)`: an fd copy (`F_DUPFD`, `F_DUPFD_CLOEXEC`: libbpf's `ensure_good_fd`, Rust's
/// `try_clone`) of one of ours stands for the same object; every call is libc's.
///
/// # Safety
/// Same contract as fcntl(2) (variadic there; on x86-64 the argument is in the same register
/// as this fixed one).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_via(c"fcntl", fd, cmd, arg)
}

/// `fcntl64`: as [`fcntl`].
///
/// # Safety
/// Same contract as fcntl(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_via(c"fcntl64", fd, cmd, arg)
}

fn fcntl_via(symbol: &'static std::ffi::CStr, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let call = || raw::result(raw::syscall6(libc::SYS_fcntl, [fd as c_long, cmd as c_long, arg as c_long, 0, 0, 0]));
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        return duplicated(fd, call());
    }
    // Every other command is libc's (a cancellation point for F_SETLKW, F_GETOWN adjusted).
    // SAFETY: dlsym(3) with RTLD_NEXT and a NUL-terminated name; a non-null result for these
    // names is libc's fcntl, called with the caller's arguments.
    unsafe {
        match libc::dlsym(libc::RTLD_NEXT, symbol.as_ptr()) {
            f if f.is_null() => raw::to_c(call()) as c_int,
            f => std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int>(f)(fd, cmd, arg),
        }
    }
}

/// `mmap(2)`: a map fd of ours maps the map's pages of the region.
///
/// # Safety
/// Same contract as mmap(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void {
    if fd >= 0 {
        if let Some(s) = ours() {
            if let Some(r) = caught(|| s.mmap_source(fd, off as u64, len as u64, prot, flags)).ok().flatten() {
                if r == Ok((u64::MAX, len as u64)) {
                    // A perf event not in a map yet: zeroed pages, the ring moved in later.
                    let anon = (flags & !(libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE)) | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                    let r = raw::result(raw::syscall6(
                        libc::SYS_mmap,
                        [addr as c_long, len as c_long, (libc::PROT_READ | libc::PROT_WRITE) as c_long, anon as c_long, -1, 0],
                    ));
                    if let Ok(p) = r {
                        s.perf_mapped(fd, p as u64, len as u64);
                    }
                    return match r {
                        Ok(p) => p as *mut c_void,
                        Err(e) => {
                            raw::set_errno(e);
                            libc::MAP_FAILED
                        }
                    };
                }
                return match r.and_then(|(src, n)| raw::map_region_pages(s.region().base(), src, n, addr, len, prot, flags)) {
                    Ok(p) => p,
                    Err(e) => {
                        raw::set_errno(e);
                        libc::MAP_FAILED
                    }
                };
            }
        }
    }
    match raw::result(raw::syscall6(libc::SYS_mmap, [addr as c_long, len as c_long, prot as c_long, flags as c_long, fd as c_long, off as c_long])) {
        Ok(p) => p as *mut c_void,
        Err(e) => {
            raw::set_errno(e);
            libc::MAP_FAILED
        }
    }
}

/// `mmap64`: the same call on x86-64.
///
/// # Safety
/// Same contract as mmap(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// The pin at `path` (a C string) removed, if it is one of ours.
fn unlink_pin(dirfd: c_int, path: *const c_char) -> Option<c_int> {
    let s = ours()?;
    let r = caught(|| {
        let p = user::read_cstr(path as u64, 4096).ok()?;
        s.unlinked(dirfd, &p)
    });
    r.ok().flatten().map(|r| raw::to_c(r) as c_int)
}

/// `unlink(2)`: a pinned path of ours is unpinned (libbpf's `bpf_map__unpin`,
/// `bpf_link__unpin`); anything else is the kernel's.
///
/// # Safety
/// Same contract as unlink(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    if let Some(r) = unlink_pin(libc::AT_FDCWD, path) {
        return r;
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_unlink, [path as c_long, 0, 0, 0, 0, 0]))) as c_int
}

/// `unlinkat(2)`: as [`unlink`], relative to `dirfd`.
///
/// # Safety
/// Same contract as unlinkat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    if flags & libc::AT_REMOVEDIR == 0 {
        if let Some(r) = unlink_pin(dirfd, path) {
            return r;
        }
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_unlinkat, [dirfd as c_long, path as c_long, flags as c_long, 0, 0, 0]))) as c_int
}

/// The fd that `path` names in this process's `/proc` directory `dir` (`/proc/self/DIR/N` or
/// `/proc/PID/DIR/N`).
fn own_proc_fd(path: &str, dir: &str) -> Option<i32> {
    let rest = path.strip_prefix(&format!("/proc/self/{dir}/")).or_else(|| path.strip_prefix(&format!("/proc/{}/{dir}/", std::process::id())))?;
    rest.parse().ok()
}

/// What `readlink` of `path` (a C string) shows when it names an fd of ours in `/proc`.
fn fd_link(dirfd: c_int, path: *const c_char) -> Option<&'static str> {
    let s = ours()?;
    caught(|| {
        let p = user::read_cstr(path as u64, 256).ok()?;
        if !p.starts_with('/') && dirfd != libc::AT_FDCWD {
            return None;
        }
        s.fd_link_text(own_proc_fd(&p, "fd")?)
    })
    .ok()
    .flatten()
}

/// Copies `text` into the caller's buffer as readlink(2) does (no NUL, truncated).
fn readlink_answer(text: &str, buf: *mut c_char, size: usize) -> isize {
    let n = text.len().min(size);
    match user::write(buf as u64, &text.as_bytes()[..n]) {
        Ok(()) => n as isize,
        Err(e) => raw::to_c(Err(e)) as isize,
    }
}

/// `readlink(2)`: `/proc/self/fd/N` of an fd of ours reads as the kernel's bpf object files do
/// (`anon_inode:bpf-map`...), which bpftool checks before using a pinned object.
///
/// # Safety
/// Same contract as readlink(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: usize) -> isize {
    if let Some(text) = fd_link(libc::AT_FDCWD, path) {
        return readlink_answer(text, buf, size);
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_readlink, [path as c_long, buf as c_long, size as c_long, 0, 0, 0]))) as isize
}

/// `readlinkat(2)`: as [`readlink`].
///
/// # Safety
/// Same contract as readlinkat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, size: usize) -> isize {
    if let Some(text) = fd_link(dirfd, path) {
        return readlink_answer(text, buf, size);
    }
    raw::to_c(raw::result(raw::syscall6(libc::SYS_readlinkat, [dirfd as c_long, path as c_long, buf as c_long, size as c_long, 0, 0]))) as isize
}

/// At unload (process exit): links this loader still holds are detached.
extern "C" fn at_exit() {
    if let Some(s) = SERVER.get().and_then(Option::as_ref) {
        let _ = caught(|| s.exiting());
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = at_exit;

/// What `/proc/self/fdinfo/N` (or `/proc/PID/fdinfo/N`, this process's) shows when N is an
/// fd of ours (see [`Server::fdinfo_text`]).
fn fdinfo_text(path: &std::ffi::CStr) -> Option<String> {
    let s = ours()?;
    caught(|| s.fdinfo_text(own_proc_fd(path.to_str().ok()?, "fdinfo")?)).ok().flatten()
}

/// `text` as a stream to read (fmemopen(3) with a buffer of its own, freed by `fclose`).
fn text_stream(text: &str) -> Option<*mut libc::FILE> {
    // SAFETY: fmemopen(3) allocates a buffer of `len + 1` bytes itself (NULL buffer); we write
    // `text` into it and rewind, so reads see exactly `text`.
    unsafe {
        let f = libc::fmemopen(std::ptr::null_mut(), text.len() + 1, c"w+".as_ptr());
        if f.is_null() {
            return None;
        }
        if libc::fwrite(text.as_ptr() as *const c_void, 1, text.len(), f) != text.len() {
            libc::fclose(f);
            return None;
        }
        libc::rewind(f);
        Some(f)
    }
}

/// The stand-in text of a kprobe PMU file (see [`pmu::stand_in_file`]) or of an fd of ours'
/// fdinfo, opened as a stream.
fn stand_in_stream(path: *const c_char) -> Option<*mut libc::FILE> {
    if path.is_null() {
        return None;
    }
    // SAFETY: fopen's contract: `path` is a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(path) };
    if let Some(text) = fdinfo_text(path) {
        return text_stream(&text);
    }
    let text = caught(|| pmu::stand_in_file(path)).ok().flatten()?;
    // SAFETY: `text` is a 'static NUL-terminated string that a read-only stream never writes
    // (fmemopen(3)); its length excludes the NUL.
    Some(unsafe { libc::fmemopen(text.as_ptr() as *mut c_void, text.to_bytes().len(), c"r".as_ptr()) })
}

/// The next definition of `fopen`-like `symbol` (libc's).
fn next_fopen(symbol: &'static std::ffi::CStr) -> Option<unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE> {
    // SAFETY: dlsym(3) with RTLD_NEXT and a NUL-terminated name; a non-null result for these
    // names is libc's function of this signature.
    unsafe {
        let f = libc::dlsym(libc::RTLD_NEXT, symbol.as_ptr());
        (!f.is_null()).then(|| std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE>(f))
    }
}

fn fopen_via(symbol: &'static std::ffi::CStr, path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if let Some(stream) = stand_in_stream(path) {
        return stream;
    }
    match next_fopen(symbol) {
        // SAFETY: the caller's fopen contract, passed on.
        Some(f) => unsafe { f(path, mode) },
        None => {
            raw::set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    }
}

/// `fopen(3)`: the kprobe PMU's sysfs files read as a stand-in where the kernel has no such
/// PMU (libbpf reads them to open a kprobe), and the fdinfo of an fd of ours as the kernel's
/// objects show it (bpftool reads `memlock` and `frozen` there); every other path is libc's.
///
/// # Safety
/// Same contract as fopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    fopen_via(c"fopen", path, mode)
}

/// `fopen64`: as [`fopen`].
///
/// # Safety
/// Same contract as fopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    fopen_via(c"fopen64", path, mode)
}

/// A callback of [`bpftime_syscall_server__poll_gpu_ringbuf_map`]: a record's bytes, their
/// count, and the caller's context.
pub type RecordCallback = unsafe extern "C" fn(data: *const c_void, size: u64, ctx: *mut c_void);

/// bpftime's entry point for loaders to read a GPU ring buffer (its examples find it with
/// `dlsym(RTLD_DEFAULT, ...)`; here any ring buffer map works): every record waiting in the
/// ring of map fd `mapfd` goes to `callback(data, size, ctx)`, oldest first. Returns 0, or
/// `-EBADF` when `mapfd` is not a ring buffer map of ours, `-EINVAL` without a callback.
///
/// # Safety
/// `callback` must be callable with a record (valid only during the call) and `ctx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bpftime_syscall_server__poll_gpu_ringbuf_map(mapfd: c_int, ctx: *mut c_void, callback: Option<RecordCallback>) -> c_int {
    let Some(callback) = callback else { return -libc::EINVAL };
    let Some(s) = server() else { return -libc::EBADF };
    let ctx = ctx as usize;
    // Not `caught`: the callback is the loader's own code, which its probes see.
    let r = std::panic::catch_unwind(|| {
        let map = s.map(mapfd as u32).ok().filter(|m| m.map_type() == bpftime_maps::MapType::Ringbuf).ok_or(libc::EBADF)?;
        map.ringbuf_consume(&mut |record| {
            // SAFETY: the caller's contract; the record stays valid for the call.
            unsafe { callback(record.as_ptr().cast(), record.len() as u64, ctx as *mut c_void) }
        });
        Ok::<(), i32>(())
    });
    match r {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => -e,
        Err(_) => -libc::EFAULT,
    }
}
