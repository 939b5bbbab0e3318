//! The agent beside the server. `bpftime load` preloads both into a loader, so that the loader
//! is traced as the kernel traces every process: a probe a loader puts on itself (libbpf's
//! `/proc/self/exe` and pid 0, a system call tracepoint whose program tests for the loader's
//! pid) runs its programs there. The server's own work in that process is not the loader's:
//! [`quiet`] runs it with the agent's probes silenced, as the agent runs its own (a program on
//! `memcpy` that updates the map whose bucket lock the server holds would wait for it for
//! ever). Without an agent beside it, [`quiet`] just runs its closure.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::OnceLock;

/// The agent's `bpftime_agent_without_probes(f, arg)`.
type WithoutProbes = extern "C" fn(extern "C" fn(*mut c_void), *mut c_void);
/// The agent's `bpftime_agent_at_work()`.
type AtWork = extern "C" fn() -> bool;

/// Looks for the agent now (the server's constructor calls it: preloaded libraries are all
/// loaded before constructors run), so that no first look, with its `dlsym`, happens later in
/// a signal handler (the agent's SIGSYS handler closes files).
pub fn find_agent() {
    agent();
}

/// The agent's two entry points, if the agent is in this process.
fn agent() -> Option<(WithoutProbes, AtWork)> {
    static FOUND: OnceLock<Option<(WithoutProbes, AtWork)>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym(3) with RTLD_DEFAULT and NUL-terminated names; the agent exports these
        // symbols with exactly the `WithoutProbes` and `AtWork` signatures, and is never
        // unloaded (it is preloaded).
        let (w, a) = unsafe {
            (libc::dlsym(libc::RTLD_DEFAULT, c"bpftime_agent_without_probes".as_ptr()), libc::dlsym(libc::RTLD_DEFAULT, c"bpftime_agent_at_work".as_ptr()))
        };
        // SAFETY: see above: functions of those types.
        (!w.is_null() && !a.is_null()).then(|| unsafe { (std::mem::transmute::<*mut c_void, WithoutProbes>(w), std::mem::transmute::<*mut c_void, AtWork>(a)) })
    })
}

thread_local! {
    /// This thread runs the server's work (inside [`quiet`]).
    static SERVING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a call the server intercepts comes from the agent's own work or a probe handler
/// (not from the loader, nor from the server's own work): it goes to the kernel as it would
/// without the server (the agent's SIGSYS handler closes a file of its own while the loader's
/// `fork` holds the server's fd table).
pub fn for_the_agent() -> bool {
    agent().is_some_and(|(_, at_work)| at_work()) && !SERVING.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` with the probes of an agent beside the server silenced on this thread (see the
/// module's doc). A panic in `f` goes on in the caller once the agent's call has returned.
pub fn quiet<F: FnOnce() -> R, R>(f: F) -> R {
    let Some((without_probes, _)) = agent() else { return f() };
    /// What the agent's call runs: the closure and where its outcome goes.
    struct Call<F, R> {
        f: Option<F>,
        out: Option<std::thread::Result<R>>,
    }
    extern "C" fn run<F: FnOnce() -> R, R>(arg: *mut c_void) {
        // SAFETY: `arg` is the `Call<F, R>` that `quiet` passed, alive and not otherwise
        // borrowed for the agent's call.
        let call = unsafe { &mut *(arg as *mut Call<F, R>) };
        if let Some(f) = call.f.take() {
            let before = SERVING.try_with(|s| s.replace(true)).unwrap_or(false);
            // Nothing unwinds into the agent.
            call.out = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            let _ = SERVING.try_with(|s| s.set(before));
        }
    }
    let mut call = Call { f: Some(f), out: None };
    without_probes(run::<F, R>, &mut call as *mut Call<F, R> as *mut c_void);
    match call.out {
        Some(Ok(r)) => r,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        // The agent did not call back (it cannot fail to): run it here.
        None => (call.f.take().expect("not taken without an outcome"))(),
    }
}
