//! CPU-time sampling: timers of this process's CPU time (timer_create(2) on
//! `CLOCK_PROCESS_CPUTIME_ID`), one per period, whose signal the kernel delivers to the thread
//! that was running as the period ran out (since Linux 6.3 it prefers the current thread), where
//! a handler the agent gives runs on that thread's interrupted registers: as the kernel runs a
//! CPU-clock perf event's programs on the task its timer interrupts. Only the process's own
//! threads are sampled (a userspace runtime sees no other process's registers).
//!
//! The signal (`SIGRTMAX - 7`) is the engine's own, installed as its other signals are (see
//! `syscalls::install_engine_handler`): the application's action for it is only recorded, what
//! is not our timers' is passed to it, and masks the application sets leave it deliverable
//! (`signals::engine_signals`). Its handler runs the agent's work as a hit at the next nesting
//! level (see `hook::run_in_signal_wrapper`), on the thread's handler stack, never over our
//! own work.

use crate::regs::PtRegs;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Told of each sample: the interrupted thread's registers, the period of CPU time that ran
/// out (nanoseconds), how many periods ran out since the last sample (1 and the timer's
/// overruns: a tick of the kernel may come after several), and the nesting level to run at.
pub type SampleHandler = fn(&PtRegs, u64, u32, usize);

static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// The timers: the process that made them (a forked child has none of its parent's) and each
/// period's kernel timer id.
static TIMERS: Mutex<(u32, Vec<(u64, i32)>)> = Mutex::new((0, Vec::new()));

/// The periods of the running timers (0: a free slot), for the signal handler to tell our
/// timers' signals from others'.
static PERIODS: [AtomicU64; MAX_PERIODS] = [const { AtomicU64::new(0) }; MAX_PERIODS];

/// How many periods may sample at once.
const MAX_PERIODS: usize = 16;

/// The most periods one sample stands for.
const MAX_RUNS: u32 = 64;

/// `si_code` of a POSIX timer's signal.
const SI_TIMER: i32 = -2;

/// The signal of the sampling timers.
pub fn sample_signal() -> libc::c_int {
    libc::SIGRTMAX() - 7
}

/// Samples this process's threads every period of `periods` (nanoseconds of the process's CPU
/// time) with `handler` from now on; timers of periods no longer named stop. An empty list
/// stops them all.
pub fn set_periods(periods: &[u64], handler: SampleHandler) -> std::io::Result<()> {
    HANDLER.store(handler as usize, Ordering::Release);
    if !periods.is_empty() {
        INSTALLED.call_once(install_handler);
    }
    let mut timers = TIMERS.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    if timers.0 != me {
        // POSIX timers do not pass to a forked child.
        *timers = (me, Vec::new());
    }
    timers.1.retain(|&(period, id)| {
        let keep = periods.contains(&period);
        if !keep {
            // SAFETY: timer_delete(2) of a timer this process made.
            unsafe { crate::syscalls::own_call(libc::SYS_timer_delete, [id as u64, 0, 0, 0, 0, 0]) };
        }
        keep
    });
    for &period in periods {
        if period == 0 || timers.1.iter().any(|&(p, _)| p == period) {
            continue;
        }
        if timers.1.len() >= MAX_PERIODS {
            return Err(std::io::Error::other(format!("more than {MAX_PERIODS} sampling periods")));
        }
        timers.1.push((period, start_timer(period)?));
    }
    for (k, slot) in PERIODS.iter().enumerate() {
        slot.store(timers.1.get(k).map_or(0, |&(p, _)| p), Ordering::Release);
    }
    Ok(())
}

static INSTALLED: Once = Once::new();

fn install_handler() {
    // SAFETY: a zeroed sigaction is valid, read into (sigaction(2)); the application's action
    // is recorded before ours replaces it.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        crate::signals::real_sigaction()(sample_signal(), std::ptr::null(), &mut old);
        crate::signals::own_signal(sample_signal(), old.sa_sigaction, old.sa_flags);
    }
    let flags = libc::SA_SIGINFO | libc::SA_RESTART;
    crate::syscalls::install_engine_handler(sample_signal(), on_sample as *const () as usize, flags);
}

/// Installs the sampling signal's handler again, where it is installed, to return through the
/// restorer of the system call interception that is starting (see
/// `patch::engine_handlers_to_own_restorer`).
pub(crate) fn handler_to_own_restorer() {
    if INSTALLED.is_completed() {
        install_handler();
    }
}

/// The kernel's `struct sigevent` (64 bytes): the value the signal carries, the signal, how
/// it is sent.
#[repr(C)]
struct KernelSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    pad: [i32; 12],
}

/// Makes a timer of the process's CPU time that signals every `period` nanoseconds of it,
/// carrying the period; its kernel id.
fn start_timer(period: u64) -> std::io::Result<i32> {
    let ev = KernelSigevent { value: period, signo: sample_signal(), notify: libc::SIGEV_SIGNAL, pad: [0; 12] };
    let mut id: i32 = 0;
    let check = |r: u64| if (r as i64) < 0 { Err(std::io::Error::from_raw_os_error(-(r as i64) as i32)) } else { Ok(()) };
    // SAFETY: timer_create(2) with a valid sigevent and a place for the id.
    check(unsafe {
        crate::syscalls::own_call(
            libc::SYS_timer_create,
            [libc::CLOCK_PROCESS_CPUTIME_ID as u64, &ev as *const KernelSigevent as u64, &mut id as *mut i32 as u64, 0, 0, 0],
        )
    })?;
    let every = libc::timespec { tv_sec: (period / 1_000_000_000) as libc::time_t, tv_nsec: (period % 1_000_000_000) as libc::c_long };
    let spec = libc::itimerspec { it_interval: every, it_value: every };
    // SAFETY: timer_settime(2) of the timer just made, with a valid itimerspec.
    check(unsafe { crate::syscalls::own_call(libc::SYS_timer_settime, [id as u64, 0, &spec as *const libc::itimerspec as u64, 0, 0, 0]) })?;
    Ok(id)
}

extern "C" fn on_sample(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let handler = HANDLER.load(Ordering::Acquire);
    if info.is_null() || ctx.is_null() || !crate::hook::libc_thread_pointer() {
        return;
    }
    // SAFETY: the kernel's siginfo for this delivery; a POSIX timer's (`si_code` SI_TIMER)
    // holds its overrun count at 20 bytes and the value it carries at 24 (`_sifields._timer`).
    let (code, overrun, period) = unsafe {
        let at = info as *const u8;
        ((*info).si_code, (at.add(20) as *const i32).read(), (at.add(24) as *const u64).read())
    };
    let ours = code == SI_TIMER && period != 0 && PERIODS.iter().any(|p| p.load(Ordering::Acquire) == period);
    if !ours {
        // The application's (its own timer, or sent by hand).
        crate::signals::forward(sig, info, ctx);
        return;
    }
    if handler == 0 {
        return;
    }
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let regs = PtRegs::from_gregs(unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs });
    let runs = 1 + (overrun.max(0) as u32).min(MAX_RUNS - 1);
    // SAFETY: set by `set_periods` from a function of this type.
    let handler = unsafe { std::mem::transmute::<usize, SampleHandler>(handler) };
    // On the handler stack: the interrupted stack may be a coroutine's few kilobytes.
    crate::hook::on_handler_stack(|_| crate::hook::run_in_signal_wrapper(|level| handler(&regs, period, runs, level)));
}
