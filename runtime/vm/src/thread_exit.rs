//! Per-thread values freed at thread exit through a pthread key instead of a Rust
//! `thread_local!` destructor.
//!
//! Why: a `thread_local!` value with a destructor is registered with glibc's
//! `__cxa_thread_atexit_impl`, which `calloc`s a list node in the thread and `free`s it when the
//! thread exits. Inside a traced application that is a libc call the application never made,
//! and a program probing `free` would count it. A pthread key's destructor slot costs no
//! allocation (for the first 32 keys of a process) and runs at thread exit all the same.
//!
//! The value itself lives behind a `const`-initialised `thread_local!` pointer (no destructor,
//! so nothing is registered); [`ThreadExitKey::register`] arranges for it to be freed.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// What runs a destructor's work as the embedder's own (see [`run_destructors_with`]).
static AS_OWN_WORK: OnceLock<fn(&mut dyn FnMut())> = OnceLock::new();

/// Has destructors' work (freeing, unmapping) run through `wrap`: an agent in a traced process
/// marks it as its own, so that its system calls are not taken for the application's. Once.
pub fn run_destructors_with(wrap: fn(&mut dyn FnMut())) {
    let _ = AS_OWN_WORK.set(wrap);
}

/// Runs `f` as a destructor's work (through what [`run_destructors_with`] set, if anything).
pub fn as_own_work(f: impl FnOnce()) {
    let mut f = Some(f);
    let mut run = || {
        if let Some(f) = f.take() {
            f()
        }
    };
    match AS_OWN_WORK.get() {
        Some(wrap) => wrap(&mut run),
        None => run(),
    }
}

/// A pthread key with a destructor, created on first use.
pub struct ThreadExitKey {
    /// The key plus one; 0 until created.
    key: AtomicU32,
    dtor: unsafe extern "C" fn(*mut c_void),
}

impl ThreadExitKey {
    /// A key whose destructor is `dtor` (it receives the pointer given to `register`).
    pub const fn new(dtor: unsafe extern "C" fn(*mut c_void)) -> Self {
        ThreadExitKey { key: AtomicU32::new(0), dtor }
    }

    fn key(&self) -> Option<libc::pthread_key_t> {
        let k = self.key.load(Ordering::Acquire);
        if k != 0 {
            return Some(k - 1);
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: pthread_key_create(3) writes the new key; the destructor is an extern "C" fn
        // that lives as long as the program.
        if unsafe { libc::pthread_key_create(&mut key, Some(self.dtor)) } != 0 {
            return None;
        }
        match self.key.compare_exchange(0, key + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Some(key),
            Err(theirs) => {
                // Another thread created the key first: use theirs, drop ours.
                // SAFETY: our key was never handed out (pthread_key_delete(3)).
                unsafe { libc::pthread_key_delete(key) };
                Some(theirs - 1)
            }
        }
    }

    /// Arranges for the destructor to receive `ptr` when this thread exits (replacing what was
    /// registered before on this thread). False if no key could be made: then nothing runs at
    /// exit and the value is leaked.
    ///
    /// # Safety
    /// `ptr` must stay valid for what the destructor does with it until this thread exits (or
    /// until another pointer is registered on it), and nothing else may free it meanwhile.
    pub unsafe fn register(&self, ptr: *mut c_void) -> bool {
        let Some(key) = self.key() else { return false };
        // SAFETY: a valid key; the value is an opaque pointer stored for this thread.
        unsafe { libc::pthread_setspecific(key, ptr) == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn count(p: *mut c_void) {
        // SAFETY: the test registers Box<u64> pointers only.
        drop(unsafe { Box::from_raw(p as *mut u64) });
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }

    static KEY: ThreadExitKey = ThreadExitKey::new(count);

    #[test]
    fn the_destructor_runs_at_thread_exit() {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    // SAFETY: a fresh box, freed only by the destructor.
                    assert!(unsafe { KEY.register(Box::into_raw(Box::new(i as u64)) as *mut c_void) })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(DROPPED.load(Ordering::SeqCst), 4);
    }
}
