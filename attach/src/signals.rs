//! The application's signal handlers, seen by the hook engine.
//!
//! A probe hit inside a signal handler that interrupted a probe handler must run at the next
//! nesting level, while a call made by the probe handler itself must not be seen at all; the
//! engine tells the two apart by wrapping every handler the application installs
//! ([`sigaction`], [`signal`], exported by the agent under those names): the wrapper marks
//! the start of a new flow ([`crate::hook::in_signal_handler`]) and calls the application's
//! handler with the same arguments. What the application reads back is what it installed.
//! An asynchronous signal that lands while the thread is busy in our work is not run then:
//! it waits, blocked, until that work ends (see `defer`).
//!
//! `SIGTRAP` (int3 probes, code being patched) and `SIGSYS` (system call interception) are the
//! engine's own while its handlers are installed: the application's action for them is kept
//! here and our handlers pass it the signals that are not ours.
//!
//! Everything a signal handler reads here is an atomic: no locks, no allocation.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Signals are numbered 1 to 64 on Linux.
const NSIG: usize = 65;

/// The application's handler for each signal whose kernel handler is our wrapper.
static APP_HANDLERS: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];

/// The application's flags for each signal whose kernel handler is ours (an owned signal).
static APP_FLAGS: [AtomicI32; NSIG] = [const { AtomicI32::new(0) }; NSIG];
/// Signals whose kernel handler is the hook engine's own (SIGTRAP, SIGSYS): the application's
/// action for them is only recorded here, and ours passes it what is not ours.
static OWNED: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];

type SigactionFn = unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;
type InfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// libc's `sigaction`, past the agent's (dlsym(3) with `RTLD_NEXT`).
pub(crate) fn real_sigaction() -> SigactionFn {
    static REAL: OnceLock<usize> = OnceLock::new();
    let f = *REAL.get_or_init(|| {
        // SAFETY: a NUL-terminated name; RTLD_NEXT looks past the object making the call.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
        if p == 0 {
            libc::sigaction as *const () as usize
        } else {
            p
        }
    });
    // SAFETY: the address of a function with sigaction(2)'s signature.
    unsafe { std::mem::transmute::<usize, SigactionFn>(f) }
}

/// Whether a handler value names a function (not `SIG_DFL`, `SIG_IGN` or `SIG_ERR`).
fn is_function(h: usize) -> bool {
    h != libc::SIG_DFL && h != libc::SIG_IGN && h != libc::SIG_ERR
}

/// Deliveries of the application's signals to the wrapper so far (see
/// `syscalls::restart_blocked_call`: a call one of them may have ended is left ended).
pub(crate) static APP_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Whether `handler` is [`wrapper`].
pub(crate) fn is_wrapper(handler: usize) -> bool {
    handler == wrapper as *const () as usize
}

/// The kernel's handler for every signal the application handles.
extern "C" fn wrapper(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    APP_SIGNALS.fetch_add(1, Ordering::AcqRel);
    if defer(sig, info, ctx) {
        return;
    }
    let h = APP_HANDLERS.get(sig as usize).map_or(0, |a| a.load(Ordering::Acquire));
    if is_function(h) {
        // SAFETY: the application installed `h` for this signal. On x86-64 the kernel passes
        // (sig, info, context) to every handler, so a one-argument handler takes them too.
        let f: InfoHandler = unsafe { std::mem::transmute::<usize, InfoHandler>(h) };
        // (The result and place the kernel left in the context, before our code changes them.)
        let kernel_left = if ctx.is_null() {
            (0, 0)
        } else {
            // SAFETY: the kernel's ucontext for this delivery.
            let g = unsafe { &(*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
            (g[libc::REG_RAX as usize], g[libc::REG_RIP as usize])
        };
        crate::syscalls::take_over_restart(ctx);
        if kernel_left.0 == -(libc::EINTR as i64) {
            LAST_ENDED_CALL.set(kernel_left.1 as u64);
        }
        crate::hook::in_signal_handler(|| {
            let observer = DELIVERY_OBSERVER.load(Ordering::Acquire);
            if observer != 0 {
                // SAFETY: set by `observe_deliveries` from a function of this type.
                let observe = unsafe { std::mem::transmute::<usize, DeliveryObserver>(observer) };
                observe(sig, info, h);
            }
            f(sig, info, ctx)
        });
        crate::syscalls::sigreturn_from_application_call(ctx, kernel_left);
    }
}

/// Told of each signal about to run the application's handler: the signal, the kernel's
/// siginfo (filled only where the action has `SA_SIGINFO`) and the application's handler.
pub type DeliveryObserver = fn(libc::c_int, *const libc::siginfo_t, usize);

static DELIVERY_OBSERVER: AtomicUsize = AtomicUsize::new(0);

/// Has `f` told of every signal delivered to the application's handlers from now on (in the
/// receiving thread, as the handler is about to run; not those deferred until our work ends,
/// until they are delivered again).
pub fn observe_deliveries(f: DeliveryObserver) {
    DELIVERY_OBSERVER.store(f as usize, Ordering::Release);
}

/// The kernel's flags for signal `sig`'s action (the application's as it installed them, our
/// wrapper in its handler's place, and libc's `SA_RESTORER`); 0 where they cannot be read.
pub fn action_flags(sig: libc::c_int) -> u64 {
    let mut now = [0u64; 4];
    // SAFETY: rt_sigaction(2) reading the kernel's action (handler, flags, restorer, 8-byte mask).
    let read = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<u64>(), now.as_mut_ptr(), 8) };
    if read == 0 {
        now[1]
    } else {
        0
    }
}

thread_local! {
    /// Where the last call this thread's application handlers ended with EINTR returns to.
    static LAST_ENDED_CALL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether the last call a handler of the application's ended with EINTR on this thread
/// returns to `pc`.
pub(crate) fn application_ended_call_at(pc: u64) -> bool {
    LAST_ENDED_CALL.get() == pc
}

/// Signals that report a fault of the instruction that raised them when the kernel sends them
/// (`si_code` > 0): those cannot wait, the instruction would fault again.
const FAULTS: [libc::c_int; 6] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS];

/// An asynchronous signal that lands while this thread runs a probe's handlers or the agent's
/// own work waits until that work is over, as the kernel's signals wait for its eBPF programs
/// to end: the application's handler would otherwise run over work of ours that holds locks,
/// and one that leaves by `siglongjmp` (a timeout, say) would abandon it for good, the locks
/// with it (the process hung). So does one that lands as a hit enters (in its stub, before
/// the thread is busy): the probed instruction ran, which on the kernel is the int3 that runs
/// the programs first, and a handler's jump from there would lose the hit's programs. So does
/// one that lands on the handler stack as a hit leaves (its work over, its stub not yet off the
/// stack): a handler's jump from there would leave the stack held. The signal is queued again
/// with its own siginfo (rt_tgsigqueueinfo(2), allowed to a thread sending to itself), kept
/// blocked in the mask the interrupted work resumes with, and unblocked when the work ends
/// (`hook::leave`), or once off the handler stack where the work ran there (the stub's way out).
/// Returns whether it was deferred.
fn defer(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) -> bool {
    if ctx.is_null() || crate::hook::in_application_call() {
        return false;
    }
    // SAFETY: the kernel's ucontext for this delivery: where the thread was interrupted.
    let (ip, sp) = unsafe {
        let g = &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs;
        (g[libc::REG_RIP as usize] as u64, g[libc::REG_RSP as usize] as u64)
    };
    if !crate::hook::in_probe() && !crate::hook::entering_at(ip) && !crate::hook::on_held_handler_stack(sp) {
        return false;
    }
    // The kernel's action: still ours (a one-shot action, SA_RESETHAND, is the default again,
    // and the signal runs now), and whether it fills the siginfo.
    let mut now = [0u64; 4];
    // SAFETY: rt_sigaction(2) reading the kernel's action (handler, flags, restorer, 8-byte mask).
    let read = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<u64>(), now.as_mut_ptr(), 8) };
    if read != 0 || now[0] != wrapper as *const () as u64 {
        return false;
    }
    let filled = now[1] & libc::SA_SIGINFO as u64 != 0 && !info.is_null();
    // Without SA_SIGINFO the kernel leaves the siginfo unwritten: the handler reads none, and
    // a signal that may be a fault is taken for one.
    // SAFETY: the kernel's siginfo for this delivery, written since SA_SIGINFO is set.
    if FAULTS.contains(&sig) && (!filled || unsafe { (*info).si_code } > 0) {
        return false;
    }
    let mut own: libc::siginfo_t = zeroed_siginfo();
    let info = if filled {
        info
    } else {
        own.si_signo = sig;
        own.si_code = -6; // SI_TKILL
        &mut own
    };
    let bit = 1u64 << (sig - 1);
    // SAFETY: rt_sigprocmask(2) with a valid 8-byte set: blocked here first, so that the
    // signal queued again below does not come straight back into this handler (SA_NODEFER).
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &bit as *const u64, std::ptr::null_mut::<u64>(), 8) };
    // SAFETY: rt_tgsigqueueinfo(2) to this thread with a valid siginfo.
    let queued = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), libc::gettid(), sig, info) } == 0;
    if !queued {
        // (Real-time signals over RLIMIT_SIGPENDING.) The mask is restored from the context.
        return false;
    }
    // SAFETY: `ctx` is the kernel's ucontext for this delivery; its mask is what the thread
    // resumes with (the first 8 bytes are the kernel's sigset).
    unsafe {
        let mask = std::ptr::addr_of_mut!((*(ctx as *mut libc::ucontext_t)).uc_sigmask) as *mut u64;
        *mask |= bit;
    }
    crate::hook::defer_signals(bit);
    crate::syscalls::return_unseen(ctx);
    true
}

/// An all-zero siginfo.
fn zeroed_siginfo() -> libc::siginfo_t {
    // SAFETY: siginfo_t is plain data, valid all zero.
    unsafe { std::mem::zeroed() }
}

/// Records that our handler now owns `sig`; `previous_handler` and `previous_flags` are the
/// action installed before ours (the application's, unless it was our wrapper).
pub(crate) fn own_signal(sig: libc::c_int, previous_handler: usize, previous_flags: libc::c_int) {
    let Some(i) = usize::try_from(sig).ok().filter(|&s| s > 0 && s < NSIG) else { return };
    if previous_handler != wrapper as *const () as usize {
        APP_HANDLERS[i].store(previous_handler, Ordering::Release);
    }
    APP_FLAGS[i].store(previous_flags, Ordering::Release);
    OWNED[i].store(true, Ordering::Release);
}

/// Passes an owned signal that is not ours to the application's action: its handler, or the
/// default action (restored, and the signal sent again to the thread).
pub(crate) fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let h = APP_HANDLERS.get(sig as usize).map_or(libc::SIG_DFL, |a| a.load(Ordering::Acquire));
    if is_function(h) {
        // SAFETY: the application's handler for this signal; see `wrapper` for the arguments.
        let f: InfoHandler = unsafe { std::mem::transmute::<usize, InfoHandler>(h) };
        crate::hook::in_signal_handler(|| f(sig, info, ctx));
        // Its `rt_sigreturn`, which our handler's return through our restorer does not show.
        crate::syscalls::forwarded_handler_returned(ctx);
    } else if h == libc::SIG_DFL {
        // The kernel's action set directly (libc's `sigaction` may be hooked to come back to
        // [`sigaction`], which only records an owned signal's action).
        // Our own calls (raw, never through a call site of libc's that system call
        // interception rewrote, which would take them for the application's and keep the
        // action of SIGSYS or SIGTRAP as it was: a SIGSYS raised again came back here for
        // ever).
        let dfl = [libc::SIG_DFL as u64, 0, 0, 0];
        // SAFETY: rt_sigaction(2) with the kernel's struct sigaction on x86-64 (handler, flags,
        // restorer, 8-byte mask); then tgkill(2) to this thread, all async-signal-safe.
        unsafe {
            use crate::syscalls::own_call;
            own_call(libc::SYS_rt_sigaction, [sig as u64, dfl.as_ptr() as u64, 0, 8, 0, 0]);
            // Sent again, to this thread, where the default action takes it (a trap too: an
            // `int3` of the application's does not happen again as the thread goes on past it,
            // and a `raise(SIGTRAP)` was lost, the process living on where it dies without us).
            let (pid, tid) = (own_call(libc::SYS_getpid, [0; 6]), own_call(libc::SYS_gettid, [0; 6]));
            own_call(libc::SYS_tgkill, [pid, tid, sig as u64, 0, 0, 0]);
        }
    }
}

/// `sigaction(2)` as the application sees it: its handlers are installed behind [`wrapper`],
/// and what it reads back is what it installed.
///
/// # Safety
/// Same contract as sigaction(2): `act` and `old` are null or valid.
pub unsafe fn sigaction(sig: libc::c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> libc::c_int {
    let real = real_sigaction();
    let Some(app) = usize::try_from(sig).ok().filter(|&s| s > 0 && s < NSIG).map(|s| &APP_HANDLERS[s]) else {
        // SAFETY: forwarded unchanged (an invalid signal: the kernel says EINVAL).
        return unsafe { real(sig, act, old) };
    };
    let i = sig as usize;
    if OWNED[i].load(Ordering::Acquire) {
        if !old.is_null() {
            // SAFETY: the caller's buffer; filled from the kernel's view, then our record.
            unsafe {
                real(sig, std::ptr::null(), old);
                (*old).sa_sigaction = app.load(Ordering::Acquire);
                (*old).sa_flags = APP_FLAGS[i].load(Ordering::Acquire);
            }
        }
        if !act.is_null() {
            // SAFETY: the caller's valid action.
            let a = unsafe { &*act };
            APP_FLAGS[i].store(a.sa_flags, Ordering::Release);
            if a.sa_sigaction != wrapper as *const () as usize {
                app.store(a.sa_sigaction, Ordering::Release);
            }
        }
        return 0;
    }
    let before = app.load(Ordering::Acquire);
    let mut wrapped;
    let mut act = act;
    // SAFETY: `act` is null or valid (the caller's contract).
    if let Some(a) = unsafe { act.as_ref() } {
        wrapped = *a;
        // (The wrapper itself, read back where a call missed us, is never taken for the
        // application's handler: it would call itself.)
        if is_function(a.sa_sigaction) && a.sa_sigaction != wrapper as *const () as usize {
            app.store(a.sa_sigaction, Ordering::Release);
            wrapped.sa_sigaction = wrapper as *const () as usize;
        }
        // While system calls are intercepted, SIGSYS is never blocked (a call made in a
        // handler with it blocked would kill the process); nor is SIGTRAP (a handler meeting
        // a probe's or a patch's `int3` with it blocked would be killed).
        if crate::syscalls::active() {
            // SAFETY: a valid sigset in our copy.
            unsafe { libc::sigdelset(&mut wrapped.sa_mask, libc::SIGSYS) };
        }
        // SAFETY: as above.
        unsafe { libc::sigdelset(&mut wrapped.sa_mask, libc::SIGTRAP) };
        act = &mut wrapped;
    }
    // SAFETY: the caller's pointers, or our copy of its action.
    let r = unsafe { real(sig, act, old) };
    if r == 0 {
        // SAFETY: `old` is null or valid, filled by the call above.
        if let Some(o) = unsafe { old.as_mut() } {
            if o.sa_sigaction == wrapper as *const () as usize {
                o.sa_sigaction = before;
            }
        }
    }
    r
}

/// `signal(2)` with glibc's (BSD) semantics, through [`sigaction`].
///
/// # Safety
/// Same contract as signal(2).
pub unsafe fn signal(sig: libc::c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is valid; the mask is filled by sigemptyset/sigaddset.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to our own locals.
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, sig);
        if sigaction(sig, &act, &mut old) != 0 {
            return libc::SIG_ERR;
        }
    }
    old.sa_sigaction
}

/// Runs `f` with the asynchronous signals blocked on this thread (faults and traps still
/// arrive, and the engine's own real-time signals); signals that come meanwhile are delivered
/// when it returns.
pub(crate) fn with_signals_deferred<R>(f: impl FnOnce() -> R) -> R {
    let old = block_async_signals();
    let r = f();
    restore_signal_mask(old);
    r
}

/// Blocks the asynchronous signals on this thread (see [`with_signals_deferred`]); returns the
/// mask before, for [`restore_signal_mask`].
pub(crate) fn block_async_signals() -> u64 {
    // The engine's real-time signals' handlers only move a thread out of code being rewritten,
    // or turn interception on. SIGSYS too: an intercepted call with it blocked would kill the
    // process (a fork's own `clone`, made while a fork handler has the others blocked).
    let open = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS].into_iter().chain(engine_signals());
    let all = !GLIBC_INTERNAL & !mask_of(open);
    let mut old = u64::MAX;
    // SAFETY: rt_sigprocmask(2) on this thread with valid 8-byte sets, made directly (libc's
    // name may be the agent's wrapper), as the agent's own work.
    crate::hook::without_probes(|| unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &all as *const u64, &mut old as *mut u64, 8) });
    old
}

/// Puts back the mask [`block_async_signals`] returned (nothing if it could not block).
pub(crate) fn restore_signal_mask(old: u64) {
    if old != u64::MAX {
        // SAFETY: as above, restoring the mask read then.
        crate::hook::without_probes(|| unsafe {
            libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &old as *const u64, std::ptr::null_mut::<u64>(), 8)
        });
    }
}

/// glibc's own signals (`SIGCANCEL`, `SIGSETXID`: 32 and 33), which its mask functions never
/// block (its set*id calls wait for every thread to take one).
const GLIBC_INTERNAL: u64 = 3 << 31;

/// Lets the signals the hook engine needs through on this thread again (after a mask function
/// the agent does not wrap returned: see the agent's `hook_libc_masks`).
pub fn reopen_needed_signals() {
    let needed = mask_of(needed_signals());
    // SAFETY: rt_sigprocmask(2) SIG_UNBLOCK with a valid 8-byte set, made directly (libc's
    // name may be the agent's wrapper).
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_UNBLOCK, &needed as *const u64, std::ptr::null_mut::<u64>(), 8) };
}

/// Whether signal masks are kept from blocking the hook engine's signals (set once an agent
/// starts in the process; see [`keep_traps_deliverable`]).
static MASKS_GUARDED: AtomicBool = AtomicBool::new(false);

/// From now on the masks the application installs through the agent's wrappers never block
/// `SIGTRAP` and the engine's other signals (see [`needed_signals`]), and this thread's mask
/// lets them through now (a mask is inherited across `execve`).
///
/// A thread that meets one of our `int3`s (a probe kept as a trap, or a jump being written
/// while the thread runs the function) with `SIGTRAP` blocked is killed by the kernel: a forced
/// trap signal that is blocked is delivered with its default action. The kernel's uprobes
/// trap without a signal, so blocking every signal in a worker thread (a common pattern) is
/// harmless there, and must be here too.
pub fn keep_traps_deliverable() {
    MASKS_GUARDED.store(true, Ordering::Release);
    reopen_needed_signals();
}

/// The signals a thread must let through for the hook engine to patch code it may run (a
/// mask of bit `sig - 1`): `SIGTRAP` and the real-time signals of [`needed_signals`]. What
/// `bpftime attach` clears in the threads of a process before the agent comes.
pub fn engine_signal_mask() -> u64 {
    mask_of(engine_signals())
}

/// `SIGTRAP` and the engine's real-time signals (fix-up rounds, turning interception on,
/// CPU-time samples).
fn engine_signals() -> [libc::c_int; 4] {
    [libc::SIGTRAP, crate::patch::fixup_signal(), crate::syscalls::enable_signal(), crate::sampling::sample_signal()]
}

/// A kernel signal mask (bit `sig - 1`) of `sigs`.
fn mask_of(sigs: impl IntoIterator<Item = libc::c_int>) -> u64 {
    sigs.into_iter().fold(0, |m, sig| m | 1u64 << (sig - 1))
}

/// The signals no mask may block while masks are guarded: `SIGTRAP`; the real-time signals
/// that move a thread out of code being rewritten and that turn system call interception on
/// in a thread (a thread blocking them could resume inside a half-written jump, or make its
/// system calls unseen); and `SIGSYS` while system calls are intercepted.
fn needed_signals() -> impl Iterator<Item = libc::c_int> {
    let guarded = MASKS_GUARDED.load(Ordering::Acquire);
    let sigsys = guarded && crate::syscalls::active();
    engine_signals().into_iter().filter(move |_| guarded).chain(Some(libc::SIGSYS).filter(|_| sigsys))
}

/// Whether blocking `sig` is to be left undone (see [`keep_traps_deliverable`]).
pub fn must_stay_deliverable(sig: libc::c_int) -> bool {
    needed_signals().any(|s| s == sig)
}

/// `set` without the signals that must stay deliverable, for a mask the application installs
/// (sigprocmask(2), pthread_sigmask(3), sigsuspend(2), a thread attribute's mask).
pub fn deliverable_set(set: &libc::sigset_t) -> libc::sigset_t {
    let mut copy = *set;
    for sig in needed_signals() {
        // SAFETY: a valid sigset_t (our copy) and a valid signal number.
        unsafe { libc::sigdelset(&mut copy, sig) };
    }
    copy
}

/// A BSD signal mask (bit `sig - 1` per signal: sigblock(3), sigsetmask(3)) without the
/// signals that must stay deliverable.
pub fn deliverable_bits(mask: libc::c_int) -> libc::c_int {
    needed_signals().filter(|&sig| sig <= 32).fold(mask, |m, sig| m & !(1u32 << (sig - 1)) as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_masks_never_block_the_engines_signals() {
        keep_traps_deliverable();
        // SAFETY: sigfillset/sigismember on a local set.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let set = deliverable_set(&all);
            for sig in [libc::SIGTRAP, crate::patch::fixup_signal(), crate::syscalls::enable_signal()] {
                assert_eq!(libc::sigismember(&set, sig), 0, "signal {sig} left blocked");
                assert!(must_stay_deliverable(sig));
                assert_ne!(engine_signal_mask() & 1 << (sig - 1), 0);
            }
            assert_eq!(libc::sigismember(&set, libc::SIGUSR1), 1, "other signals stay as asked");
        }
        // A BSD mask holds signals 1 to 32 only: SIGTRAP's bit goes, nothing overflows.
        assert_eq!(deliverable_bits(-1), !(1 << (libc::SIGTRAP - 1)));
        assert!(!must_stay_deliverable(libc::SIGUSR1));
    }
}
