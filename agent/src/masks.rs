//! Signal-mask functions of libc, wrapped: the masks an application installs never block the
//! signals the hook engine needs delivered (`SIGTRAP` for its traps; see
//! `bpftime_attach::signals::keep_traps_deliverable`). Everything else is passed on unchanged,
//! and what the functions return is libc's answer.

use bpftime_attach::signals::{deliverable_bits, deliverable_set, must_stay_deliverable};
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The next definition of a wrapped function, after the agent's (dlsym(3) with `RTLD_NEXT`),
/// looked up once.
struct Next {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Next {
    const fn new(name: &'static CStr) -> Next {
        Next { name, addr: AtomicUsize::new(0) }
    }

    /// The address, 0 where nothing else defines the name.
    fn addr(&self) -> usize {
        let mut f = self.addr.load(Ordering::Acquire);
        if f == 0 {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name (dlsym(3)).
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
            self.addr.store(f, Ordering::Release);
        }
        f
    }
}

static SIGPROCMASK: Next = Next::new(c"sigprocmask");
static PTHREAD_SIGMASK: Next = Next::new(c"pthread_sigmask");
static SIGSUSPEND: Next = Next::new(c"sigsuspend");
static PTHREAD_ATTR_SETSIGMASK_NP: Next = Next::new(c"pthread_attr_setsigmask_np");
static SIGBLOCK: Next = Next::new(c"sigblock");
static SIGSETMASK: Next = Next::new(c"sigsetmask");
static SIGHOLD: Next = Next::new(c"sighold");

/// Looks every wrapped function up now, so that no lookup (dlsym is not async-signal-safe)
/// happens in a signal handler that changes its mask.
pub(crate) fn resolve_all() {
    for f in [&SIGPROCMASK, &PTHREAD_SIGMASK, &SIGSUSPEND, &PTHREAD_ATTR_SETSIGMASK_NP, &SIGBLOCK, &SIGSETMASK, &SIGHOLD] {
        f.addr();
    }
}

type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// sigprocmask(2) or pthread_sigmask(3) through `next`, with `set` made deliverable.
///
/// # Safety
/// Same contract as sigprocmask(2).
unsafe fn change_mask(next: &Next, how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> Option<c_int> {
    let f = next.addr();
    if f == 0 {
        return None;
    }
    // SAFETY: libc's function of that name, which has this signature.
    let f = unsafe { std::mem::transmute::<usize, MaskFn>(f) };
    // Only a mask that blocks is changed (unblocking SIGTRAP is always welcome).
    let blocks = how == libc::SIG_BLOCK || how == libc::SIG_SETMASK;
    // SAFETY: `set` is null or valid (the caller's contract).
    match unsafe { set.as_ref() } {
        // SAFETY: our copy of the caller's set, and the caller's `old`.
        Some(s) if blocks => Some(unsafe { f(how, &deliverable_set(s), old) }),
        // SAFETY: the caller's arguments unchanged.
        _ => Some(unsafe { f(how, set, old) }),
    }
}

/// -1 with `errno` set to `e`, as libc's functions fail.
fn fail(e: c_int) -> c_int {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = e };
    -1
}

/// `sigprocmask`, wrapped (see the module).
///
/// # Safety
/// Same contract as sigprocmask(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    // SAFETY: the caller's arguments under the same contract.
    unsafe { change_mask(&SIGPROCMASK, how, set, old) }.unwrap_or_else(|| fail(libc::ENOSYS))
}

/// `pthread_sigmask`, wrapped (see the module).
///
/// # Safety
/// Same contract as pthread_sigmask(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    // SAFETY: the caller's arguments under the same contract.
    unsafe { change_mask(&PTHREAD_SIGMASK, how, set, old) }.unwrap_or(libc::ENOSYS)
}

/// `sigsuspend`, wrapped: handlers that run while it waits have its mask.
///
/// # Safety
/// Same contract as sigsuspend(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigsuspend(set: *const libc::sigset_t) -> c_int {
    type SuspendFn = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;
    let f = SIGSUSPEND.addr();
    if f == 0 {
        return fail(libc::ENOSYS);
    }
    // SAFETY: libc's sigsuspend.
    let f = unsafe { std::mem::transmute::<usize, SuspendFn>(f) };
    // SAFETY: `set` is null or valid (the caller's contract); our copy of it, or the caller's
    // pointer unchanged (libc answers EFAULT).
    match unsafe { set.as_ref() } {
        Some(s) => unsafe { f(&deliverable_set(s)) },
        None => unsafe { f(set) },
    }
}

/// `pthread_attr_setsigmask_np`, wrapped: the mask a new thread starts with.
///
/// # Safety
/// Same contract as pthread_attr_setsigmask_np(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_attr_setsigmask_np(attr: *mut libc::pthread_attr_t, set: *const libc::sigset_t) -> c_int {
    type AttrMaskFn = unsafe extern "C" fn(*mut libc::pthread_attr_t, *const libc::sigset_t) -> c_int;
    let f = PTHREAD_ATTR_SETSIGMASK_NP.addr();
    if f == 0 {
        return libc::ENOSYS;
    }
    // SAFETY: libc's function of that name.
    let f = unsafe { std::mem::transmute::<usize, AttrMaskFn>(f) };
    // SAFETY: as in `sigsuspend`; `attr` is the caller's.
    match unsafe { set.as_ref() } {
        Some(s) => unsafe { f(attr, &deliverable_set(s)) },
        None => unsafe { f(attr, set) },
    }
}

/// Calls a BSD mask function (`sigblock`, `sigsetmask`) with `mask` made deliverable.
fn bits_call(next: &Next, mask: c_int) -> c_int {
    type BitsFn = unsafe extern "C" fn(c_int) -> c_int;
    let f = next.addr();
    if f == 0 {
        return -1;
    }
    // SAFETY: libc's function of that name, which takes and returns an int mask.
    unsafe { std::mem::transmute::<usize, BitsFn>(f)(deliverable_bits(mask)) }
}

/// `sigblock`, wrapped (BSD).
#[unsafe(no_mangle)]
pub extern "C" fn sigblock(mask: c_int) -> c_int {
    bits_call(&SIGBLOCK, mask)
}

/// `sigsetmask`, wrapped (BSD).
#[unsafe(no_mangle)]
pub extern "C" fn sigsetmask(mask: c_int) -> c_int {
    bits_call(&SIGSETMASK, mask)
}

/// `sighold`, wrapped (System V): holding a signal that must stay deliverable does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn sighold(sig: c_int) -> c_int {
    type HoldFn = unsafe extern "C" fn(c_int) -> c_int;
    if must_stay_deliverable(sig) {
        return 0;
    }
    match SIGHOLD.addr() {
        0 => fail(libc::ENOSYS),
        // SAFETY: libc's sighold.
        f => unsafe { std::mem::transmute::<usize, HoldFn>(f)(sig) },
    }
}

/// After a libc mask function returns in a process the agent was loaded into while it ran:
/// the signals the hook engine needs are let through again (see
/// `bpftime_attach::signals::reopen_needed_signals`).
struct ReopenAfterReturn;

impl bpftime_attach::ProbeHandler for ReopenAfterReturn {
    fn on_hit(&self, _regs: &bpftime_attach::PtRegs, _level: usize) -> Option<u64> {
        bpftime_attach::signals::reopen_needed_signals();
        None
    }
}

/// In a process the agent was loaded into while it ran (`bpftime attach`), the application
/// calls libc's mask functions directly (the agent's wrappers are not in its lookup order):
/// a return probe on `sigprocmask` and `pthread_sigmask` lets the signals the hook engine
/// needs through again as each returns, so that a thread that blocks every signal after the
/// attach still takes SIGTRAP. The call itself runs untouched (what it returns, the signals
/// it lets through, the system call it makes); a signal arriving between its system call and
/// the return finds the mask it set. (`sigsuspend`'s and a new thread's attribute mask are
/// not seen.)
pub(crate) fn hook_libc_masks() {
    let mut hooked = std::collections::HashSet::new();
    for name in [c"sigprocmask", c"pthread_sigmask"] {
        // SAFETY: dlsym(3) in the global scope with a NUL-terminated name.
        let real = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
        // Missing, or an alias already hooked.
        if real == 0 || !hooked.insert(real) {
            continue;
        }
        let info = bpftime_attach::SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        if let Err(e) = bpftime_attach::attach(real as u64, info, bpftime_attach::ProbeKind::Return, std::sync::Arc::new(ReopenAfterReturn)) {
            eprintln!(
                "bpftime: libc's {} cannot be hooked ({e}): a thread that blocks SIGTRAP through it may be killed by a probe's trap",
                name.to_string_lossy()
            );
        }
    }
}
