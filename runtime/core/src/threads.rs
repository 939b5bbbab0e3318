//! Threads of ours inside someone else's process (the agent's link follower, the syscall
//! server's ring watcher and timers): they block every asynchronous signal, so that a
//! process-directed signal (`SIGALRM` of a timer, `SIGINT`, `SIGCHLD`) goes to a thread of the
//! application, as without us. A handler running on our thread instead would leave the
//! application's own blocking call uninterrupted (a `read` waiting for `EINTR` would wait for
//! ever). Two kinds stay open. The synchronous ones ([`SYNCHRONOUS`]): the kernel kills a
//! process whose thread raises one it blocks, and ours do raise `SIGTRAP` (the follower
//! attaching or detaching a probe on `malloc` calls `malloc` itself while the function's first
//! byte is the `int3` of the change, which the hook engine's handler sends on to the original
//! instructions). And the hook engine's fix-up signal: a thread of ours paused inside bytes
//! being patched is moved out of them as the application's are.
//!
//! See pthread_sigmask(3) <https://man7.org/linux/man-pages/man3/pthread_sigmask.3.html>:
//! a new thread starts with its creator's mask.
//!
//! They are started with pthread_create(3) directly, not `std::thread`: spawning through std
//! touches thread-locals of the spawning thread (spawn hooks), whose destructors libc records
//! with a `calloc` and frees at that thread's exit. The spawning thread is the application's,
//! and those `free` calls would show in a uprobe on `free` where the kernel sees none.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The threads of ours running: process id above thread id (0: a free slot). A forked
/// child inherits the list, whose entries name its parent's threads (free slots to it).
static OURS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

fn ours_key(tid: u32) -> u64 {
    (bpftime_shm::ids::process_id() as u64) << 32 | tid as u64
}

/// Records the calling thread as ours; its slot (none when all are taken).
fn register() -> Option<&'static AtomicU64> {
    // SAFETY: gettid(2) has no preconditions.
    let key = ours_key(unsafe { libc::gettid() } as u32);
    // A free slot, or one a parent process's thread left (a forked child inherits them).
    let free = |v: u64| v == 0 || v >> 32 != key >> 32;
    OURS.iter().find(|slot| {
        let v = slot.load(Ordering::Acquire);
        free(v) && slot.compare_exchange(v, key, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    })
}

/// Whether thread `tid` of this process is one of ours (started by [`spawn_quiet`]): the
/// application's programs do not see it come or go.
pub fn is_ours(tid: u32) -> bool {
    let key = ours_key(tid);
    tid != 0 && OURS.iter().any(|slot| slot.load(Ordering::Acquire) == key)
}

/// Signals raised by the instruction a thread runs, which no thread of ours may block.
pub const SYNCHRONOUS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP];

/// The signal by which the hook engine (`bpftime-attach`'s `patch`) moves every other thread
/// out of the bytes it is about to patch: ours run probed code too (`malloc`), so they take it.
fn fixup_signal() -> libc::c_int {
    libc::SIGRTMAX() - 5
}

/// Spawns detached thread `name` running `f` with every asynchronous signal blocked.
pub fn spawn_quiet<F>(name: &str, f: F) -> io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the box leaked below, handed to exactly one thread.
        let (name, f, started) = *unsafe { Box::from_raw(arg as *mut Start) };
        // SAFETY: names the calling thread (prctl(2) PR_SET_NAME reads a NUL-terminated name,
        // at most 16 bytes with the NUL): one system call, where pthread_setname_np(3) on
        // another thread opens and writes /proc/self/task/TID/comm.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        let slot = register();
        started.store(1, Ordering::Release);
        drop(started);
        // A panic must not unwind out of a C thread start routine.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Some(slot) = slot {
            slot.store(0, Ordering::Release);
        }
        std::ptr::null_mut()
    }
    // The name as prctl wants it: at most 15 bytes and a NUL, no allocation of its own.
    type Start = ([u8; 16], Box<dyn FnOnce() + Send>, std::sync::Arc<AtomicU32>);
    let mut cname = [0u8; 16];
    for (to, from) in cname.iter_mut().zip(name.bytes().take(15).filter(|&b| b != 0)) {
        *to = from;
    }
    // Set once the thread is named and known as ours ([`is_ours`]): the caller waits for it, so
    // that no thread of ours is ever seen as the application's.
    let started = std::sync::Arc::new(AtomicU32::new(0));
    let boxed: Box<Start> = Box::new((cname, Box::new(f), started.clone()));
    let arg = Box::into_raw(boxed) as *mut libc::c_void;
    // Every signal but the synchronous ones, the fix-up one and glibc's own two (32 and 33:
    // its set*id calls wait for every thread to take one), as 64-bit kernel masks.
    let all = SYNCHRONOUS.iter().chain(&[fixup_signal(), 32, 33]).fold(!0u64, |m, &sig| m & !(1u64 << (sig - 1)));
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask(2) on this thread with valid 8-byte sets, made directly: libc's
    // name may be the agent's wrapper, which keeps other signals open for the application.
    let blocked = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all as *const u64, &mut old as *mut u64, 8) } == 0;
    let mut thread: libc::pthread_t = 0;
    // SAFETY: pthread_create(3) with default attributes, a start routine of the right type and
    // an argument it owns from now on (on failure it is not passed to anyone).
    let rc = unsafe { libc::pthread_create(&mut thread, std::ptr::null(), start, arg) };
    if blocked {
        // SAFETY: `old` was written by the successful call above; restores this thread's mask.
        unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &old as *const u64, std::ptr::null_mut::<u64>(), 8) };
    }
    if rc != 0 {
        // SAFETY: no thread took `arg`; reclaims the box leaked above.
        drop(unsafe { Box::from_raw(arg as *mut Start) });
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: detaches the thread just created: nobody joins it (pthread_detach(3)).
    unsafe { libc::pthread_detach(thread) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while started.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The thread blocks the asynchronous signals, not the synchronous ones; the caller's mask
    /// is as it was.
    #[test]
    fn spawned_threads_block_signals_and_callers_do_not() {
        let mask = || {
            let mut m = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: with a null new set, pthread_sigmask(3) only writes the current mask.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), m.as_mut_ptr()) };
            // SAFETY: written above; sigismember(3) reads it.
            [libc::SIGALRM, libc::SIGTRAP, libc::SIGSEGV].map(|sig| unsafe { libc::sigismember(m.as_ptr(), sig) })
        };
        let before = mask();
        let (tx, rx) = std::sync::mpsc::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        super::spawn_quiet("test", move || {
            // SAFETY: gettid(2) has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            tx.send(mask()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
        })
        .unwrap();
        // Known as ours from the moment it runs; the caller's thread is not.
        let tid = tid_rx.recv().unwrap();
        assert!(super::is_ours(tid));
        // SAFETY: as above.
        assert!(!super::is_ours(unsafe { libc::gettid() } as u32));
        assert_eq!(rx.recv().unwrap(), [1, 0, 0], "SIGALRM blocked in the thread, SIGTRAP and SIGSEGV not");
        assert_eq!(mask(), before);
    }
}
