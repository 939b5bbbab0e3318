//! The process and thread ids, cached: `getpid` and `gettid` are system calls (glibc caches
//! neither), and locks and helpers need them in nanoseconds. A fork handler clears both caches
//! in the child (whose one thread is the forking one). While a `vfork` child runs in this
//! process's memory ([`VFORK_CHILDREN`] not 0), nothing is cached or read from the caches: the
//! child's ids are not its caller's.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

static PID: AtomicU32 = AtomicU32::new(0);

/// How many `vfork` children of this process run in its memory now (the hook engine's system
/// call interception counts them: `bpftime_attach::syscalls::count_vfork_children`).
pub static VFORK_CHILDREN: AtomicU32 = AtomicU32::new(0);

bpftime_tls::initial_exec! {
    /// This thread's id once asked for (0: not yet).
    static TID: Cell<u32> as "bpftime_shm_thread_id";
}

fn forget_after_fork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        PID.store(0, Ordering::Relaxed);
        // The vfork children of other threads run in the parent's memory, not this copy.
        VFORK_CHILDREN.store(0, Ordering::Relaxed);
        TID.set(0);
    }
    // SAFETY: registers a child-side fork handler that only stores to an atomic and a TLS cell
    // (pthread_atfork(3)); it is async-signal-safe.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(in_child));
    });
}

/// This process's id.
pub fn process_id() -> u32 {
    if VFORK_CHILDREN.load(Ordering::Relaxed) != 0 {
        return std::process::id();
    }
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    forget_after_fork();
    let p = std::process::id();
    PID.store(p, Ordering::Relaxed);
    p
}

/// This thread's id.
pub fn thread_id() -> u32 {
    if VFORK_CHILDREN.load(Ordering::Relaxed) != 0 {
        // SAFETY: gettid has no preconditions.
        return unsafe { libc::gettid() as u32 };
    }
    if TID.get() == 0 {
        forget_after_fork();
        // SAFETY: gettid has no preconditions.
        TID.set(unsafe { libc::gettid() as u32 });
    }
    TID.get()
}

/// Runs `f` with [`thread_id`] reporting `tid` (another thread's id: work done on its behalf,
/// such as the exit events of the threads an `exit_group` ends).
pub fn as_thread(tid: u32, f: impl FnOnce()) {
    // (The cache as it was, 0 included: in a `vfork` child it is the parent thread's.)
    let own = TID.get();
    TID.set(tid);
    f();
    TID.set(own);
}
