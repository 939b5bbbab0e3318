//! A spin lock that lives in shared memory and survives the death of its holder.
//!
//! The lock word holds the pid of the holder (0 when free). A waiter that spins for long
//! checks whether that process still exists (`kill(pid, 0)`); if it does not, the waiter takes
//! the lock over and is told so ([`ShmGuard::recovered`]), so that it can repair whatever the
//! dead holder left half done. The same happens after [`STUCK_AFTER`] without progress (a
//! stopped holder, or a lock word scribbled on), so a lock never hangs its waiters for good. This is what keeps a SIGKILLed process from wedging a map for
//! every other process.

use std::sync::atomic::{AtomicU32, Ordering};

/// A process-shared, owner-recovering spin lock. All-zero bytes are an unlocked lock.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ShmLock {
    owner: AtomicU32,
    /// Acquisitions so far (wrapping): a waiter that sees neither it nor the holder change for
    /// [`STUCK_AFTER`] takes the lock over.
    acquisitions: AtomicU32,
}

/// How long a lock may stay with one holder, with no other acquisition, before a waiter takes it
/// over as if the holder had died. Critical sections take microseconds.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Proof that the lock is held; unlocks on drop.
#[derive(Debug)]
pub struct ShmGuard<'a> {
    lock: &'a ShmLock,
    recovered: bool,
    /// Counted in [`held_by_this_thread`] (a lock guarding data, not a CPU run slot).
    counted: bool,
}

impl ShmGuard<'_> {
    /// Whether the lock was taken over from a process that died holding it: the data it
    /// protects may be half updated.
    pub fn recovered(&self) -> bool {
        self.recovered
    }
}

impl ShmGuard<'_> {
    /// Says the holder is alive and working (a long critical section, such as rebuilding a
    /// large map): waiters then do not take the lock over as stuck.
    pub fn touch(&self) {
        self.lock.count_acquisition();
    }
}

impl Drop for ShmGuard<'_> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Release);
        if self.counted {
            // (Uncounted only once released, for a signal handler that lands in between.)
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            HELD.set(HELD.get() - 1);
        }
    }
}

bpftime_tls::initial_exec! {
    /// Locks this thread holds: a signal handler nested in a holder must not wait for a lock
    /// (it would wait for itself).
    static HELD: std::cell::Cell<u32> as "bpftime_shm_locks_held";
}

/// Whether this thread holds a region lock (in any of its flows, signal handlers included).
pub fn held_by_this_thread() -> bool {
    HELD.get() != 0
}

/// Does now what the first lock would do lazily (caching the pid, registering its fork
/// handler), so that a child forked while another thread takes its first lock does not inherit
/// that work half done.
pub fn prepare() {
    crate::ids::process_id();
}

/// Whether a process with this pid exists (kill(2) with signal 0: anything but ESRCH; 0 and
/// pids out of range, as a scribbled word of the region may hold, count as gone).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists (kill(2)).
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl ShmLock {
    /// Takes the lock, spinning (then yielding) while another process or thread holds it.
    #[inline]
    pub fn lock(&self) -> ShmGuard<'_> {
        self.try_acquire(true).unwrap_or_else(|| self.acquire(true))
    }

    /// [`ShmLock::lock`] for a lock that guards no data a signal handler could need (a CPU's
    /// run slot): not counted in [`held_by_this_thread`].
    #[inline]
    pub fn lock_uncounted(&self) -> ShmGuard<'_> {
        self.try_acquire(false).unwrap_or_else(|| self.acquire(false))
    }

    /// [`ShmLock::lock`] once the lock was found taken: waits for it, or takes it over.
    #[cold]
    #[inline(never)]
    fn acquire(&self, counted: bool) -> ShmGuard<'_> {
        let held = |d: i32| {
            if counted {
                HELD.set(HELD.get().wrapping_add_signed(d));
                // (Kept on its side of the exchange, for a signal handler of this thread.)
                std::sync::atomic::compiler_fence(Ordering::SeqCst);
            }
        };
        let me = crate::ids::process_id();
        let mut spins: u32 = 0;
        // (holder, acquisition count, when first seen) while we wait.
        let mut watching: Option<(u32, u32, std::time::Instant)> = None;
        loop {
            let cur = self.owner.load(Ordering::Relaxed);
            if cur == 0 {
                // Counted as held before the lock word says so: a signal handler arriving just
                // after the exchange must not wait for the lock its own thread holds.
                held(1);
                if self.owner.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    self.count_acquisition();
                    return ShmGuard { lock: self, recovered: false, counted };
                }
                held(-1);
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                // A holder that is dead, or that held the lock without anyone else getting it
                // for longer than any critical section takes (a stopped process, or a lock word
                // scribbled on: the region is writable by programs), is taken over.
                let seq = self.acquisitions.load(Ordering::Relaxed);
                let stuck = match watching {
                    Some((who, n, since)) if who == cur && n == seq => since.elapsed() >= STUCK_AFTER,
                    _ => {
                        watching = Some((cur, seq, std::time::Instant::now()));
                        false
                    }
                };
                if (cur != me && !process_alive(cur)) || stuck {
                    held(1);
                    if self.owner.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        self.count_acquisition();
                        return ShmGuard { lock: self, recovered: true, counted };
                    }
                    held(-1);
                    continue;
                }
            }
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the lock if it is free now (never waits, never takes over from a holder).
    pub fn try_lock(&self) -> Option<ShmGuard<'_>> {
        self.try_acquire(true)
    }

    /// [`ShmLock::try_lock`], not counted (see [`ShmLock::lock_uncounted`]).
    #[inline]
    pub fn try_lock_uncounted(&self) -> Option<ShmGuard<'_>> {
        self.try_acquire(false)
    }

    #[inline(always)]
    fn try_acquire(&self, counted: bool) -> Option<ShmGuard<'_>> {
        let me = crate::ids::process_id();
        if self.owner.load(Ordering::Relaxed) != 0 {
            return None;
        }
        if counted {
            HELD.set(HELD.get() + 1);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.count_acquisition();
            return Some(ShmGuard { lock: self, recovered: false, counted });
        }
        if counted {
            HELD.set(HELD.get() - 1);
        }
        None
    }

    /// Counts an acquisition (we hold the lock: a plain load and store, no locked instruction).
    #[inline(always)]
    fn count_acquisition(&self) {
        self.acquisitions.store(self.acquisitions.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// The pid holding the lock, or 0.
    pub fn holder(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }

    /// Marks the lock as held by `pid` (for tests that simulate a holder that died).
    pub fn force_holder(&self, pid: u32) {
        self.owner.store(pid, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_threads() {
        let lock = Arc::new(ShmLock::default());
        let counter = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let _g = lock.lock();
                        // A non-atomic read-modify-write made safe only by the lock.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn a_stuck_holder_is_taken_over() {
        let lock = ShmLock::default();
        // Our own pid (alive) holding a lock nobody releases: a scribbled lock word.
        lock.force_holder(std::process::id());
        let start = std::time::Instant::now();
        let g = lock.lock();
        assert!(g.recovered());
        assert!(start.elapsed() >= STUCK_AFTER && start.elapsed() < STUCK_AFTER * 10, "{:?}", start.elapsed());
    }

    #[test]
    fn dead_holder_is_recovered() {
        let lock = ShmLock::default();
        // A pid that cannot exist (above pid_max).
        lock.force_holder(0x3fff_fff0);
        let g = lock.lock();
        assert!(g.recovered());
        drop(g);
        assert!(!lock.lock().recovered());
    }
}
