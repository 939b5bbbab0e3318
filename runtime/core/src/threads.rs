//! Threads of ours inside someone else's process (the agent's link follower, the syscall
//! server's ring watcher and timers): they block every signal, so that a process-directed
//! signal (`SIGALRM` of a timer, `SIGINT`, `SIGCHLD`) goes to a thread of the application, as
//! without us. A handler running on our thread instead would leave the application's own
//! blocking call uninterrupted (a `read` waiting for `EINTR` would wait for ever).
//!
//! See pthread_sigmask(3) <https://man7.org/linux/man-pages/man3/pthread_sigmask.3.html>:
//! a new thread starts with its creator's mask.

use std::io;

/// Spawns thread `name` running `f` with every signal blocked.
pub fn spawn_quiet<F>(name: &str, f: F) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset(3) initialises the set it is given; pthread_sigmask(3) reads `all`
    // (initialised) and writes the previous mask into `old`.
    let blocked = unsafe { libc::sigfillset(all.as_mut_ptr()) == 0 && libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr()) == 0 };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    if blocked {
        // SAFETY: `old` was written by the successful call above; restores this thread's mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    }
    spawned
}

#[cfg(test)]
mod tests {
    /// The thread blocks every signal; the caller's mask is as it was.
    #[test]
    fn spawned_threads_block_signals_and_callers_do_not() {
        let mask = || {
            let mut m = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: with a null new set, pthread_sigmask(3) only writes the current mask.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), m.as_mut_ptr()) };
            // SAFETY: written above; sigismember(3) reads it.
            unsafe { libc::sigismember(m.as_ptr(), libc::SIGALRM) }
        };
        let before = mask();
        let inside = super::spawn_quiet("test", move || assert_eq!(mask(), 1, "SIGALRM blocked in the thread")).unwrap();
        inside.join().unwrap();
        assert_eq!(mask(), before);
    }
}
