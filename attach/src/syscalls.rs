//! The system calls of this process, seen in userspace before and after they run.
//!
//! Syscall User Dispatch (prctl(2) `PR_SET_SYSCALL_USER_DISPATCH`, Linux 5.11+) makes the
//! kernel turn every system call a thread makes from outside one allowed address range into a
//! SIGSYS, while the thread's selector byte says BLOCK. The selector follows the hook engine's
//! thread state (`hook::HookThread::selector`): ALLOW while the thread runs our code, BLOCK otherwise, so
//! the agent's own calls go straight to the kernel. Whatever `syscall` instruction the
//! application runs (libc's wrappers, `syscall(3)`, inline assembly, code generated at run time
//! or in a library loaded later) therefore reaches our SIGSYS handler, which runs the enter
//! handlers, makes the call itself and runs the exit handlers with its result in `ax`.
//!
//! Calls that cannot be made from inside a signal handler (`rt_sigreturn`, `clone`, `clone3`,
//! `fork`, `vfork`, `execve`, `execveat`, `exit`, `exit_group`) are made in place instead:
//! the thread resumes at a per-site gadget in the allowed range (`syscall`, then a jump back
//! after the original instruction) with its registers as they were (an exec's environment
//! array aside: see [`mark_execs`]). For `clone`, `clone3`,
//! `fork`, `vfork` and the `execve`s, the gadget sends the caller through a stub that runs the
//! exit handlers first, with the result: the new child's id, or the error of a call that
//! failed. The application's children go through exit stubs of their own, whose handlers see
//! the call return 0 (see [`ChildPath`]): a `vfork` child once it has turned dispatch on for
//! itself, a new thread before dispatch is turned on for it, a forked process through a
//! record its fork handler replays (see [`ForkChild`]). The end of `exit` and `exit_group` is
//! not seen; that of `rt_sigreturn` is run before the call, from the registers it restores
//! (see [`sigreturn_restores`]). Our SIGSYS handler returns through a restorer in the allowed
//! range. The actions of SIGSYS and SIGTRAP are ours while calls are intercepted:
//! a raw `rt_sigaction` that would change them (glibc's `posix_spawn` child resets every
//! handled signal) only reads them.
//!
//! Dispatch is per thread and is not inherited by new threads or processes: [`enable`] turns
//! it on for the calling thread (the agent calls it at start, in every thread the application
//! creates with `pthread_create`, and in the child after `fork`), and a new thread's exit stub
//! for itself. An `execve` ends it with the
//! image.
//!
//! Unsafe code: the raw system call, prctl(2) and rt_sigaction(2), writing the allowed range,
//! and calling the copy of the application-call routine there.

use crate::hook::{self, Admission, Interruption};
use crate::regs::PtRegs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Called around the system calls of the process, from a signal handler or a call site's stub:
/// a handler must not use libc's allocator or locks (the call it sees may come from inside
/// them; the agent allocates from its own mappings).
pub trait SyscallHandler: Send + Sync {
    /// Before call `regs.orig_ax` runs, its arguments in `di`, `si`, `dx`, `r10`, `r8`, `r9`
    /// (`ip` is the address after the `syscall` instruction). `level` as for probes. `Some(rc)`:
    /// the call is not made and returns `rc` (error injection); calls that must be made in
    /// place (`exit`, `execve`, `clone`...) are made anyway.
    fn on_enter(&self, regs: &PtRegs, level: usize) -> Option<u64>;
    /// After it ran: `ax` is the result (a negative errno on failure).
    fn on_exit(&self, regs: &PtRegs, level: usize);
    /// A call whose handlers could not run (nested too deep, or in the agent's own work).
    fn on_miss(&self, _nr: u64) {}
}

const PR_SET_SYSCALL_USER_DISPATCH: libc::c_int = 59;
const PR_SYS_DISPATCH_ON: libc::c_ulong = 1;
/// arch_prctl(2)'s code that sets the thread pointer (FS base).
const ARCH_SET_FS: u64 = 0x1002;
/// `si_code` of a SIGSYS sent by Syscall User Dispatch.
const SYS_USER_DISPATCH: libc::c_int = 2;
/// Size of the allowed range: the restorer, a copy of the routine that makes the application's
/// calls (at [`APP_CALL_AT`]), then gadget slots.
const ALLOWED_LEN: usize = 64 * 1024;
/// Where the allowed range holds its copy of `bpftime_app_syscall`: a call made there is let
/// through on the kernel's side by its address alone, without the read of the thread's selector
/// byte that a call from anywhere else costs (about 10 ns of a traced call on this VM).
const APP_CALL_AT: usize = 16;
/// Bytes of one gadget slot (see [`gadget`]).
const GADGET_LEN: usize = 64;
const FIRST_GADGET: usize = 64;
const GADGETS: usize = (ALLOWED_LEN - FIRST_GADGET) / GADGET_LEN;
/// Gadget slots kept for the calls that must be made in place (see [`gadget`]).
const GADGETS_KEPT: usize = 128;

static HANDLER: OnceLock<Arc<dyn SyscallHandler>> = OnceLock::new();
/// The allowed range (0 until [`start`]).
static ALLOWED: AtomicUsize = AtomicUsize::new(0);
/// What each gadget made so far is for (see [`gadget_key`]; 0 = free, `u64::MAX` = being made).
static GADGET_RETURNS: [AtomicU64; GADGETS] = [const { AtomicU64::new(0) }; GADGETS];
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The address of a `syscall` instruction in the allowed range (0 before [`start`]): a system
/// call made there is never dispatched (`bpftime attach` steps a thread through it).
pub fn allowed_syscall_instruction() -> u64 {
    match ALLOWED.load(Ordering::Acquire) {
        0 => 0,
        // The restorer's `syscall`, after `mov rax, 15`.
        page => page as u64 + 7,
    }
}

/// Whether system calls are being intercepted in this process.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Calls made in place (see the module documentation).
fn in_place(nr: u64) -> bool {
    const IN_PLACE: [i64; 9] = [
        libc::SYS_rt_sigreturn,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    IN_PLACE.contains(&(nr as i64))
}

/// Makes system call `nr` with six arguments.
///
/// # Safety
/// The call must be one that may be made from here (not one of [`in_place`]'s), with
/// arguments valid for it, as the application gave them.
pub(crate) unsafe fn raw_syscall(nr: u64, a: [u64; 6]) -> u64 {
    let ret: u64;
    // SAFETY: the caller's contract; `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Writes bytes into the allowed range (mapped read-execute).
fn write_allowed(off: usize, bytes: &[u8]) -> bool {
    let base = ALLOWED.load(Ordering::Acquire);
    base != 0 && crate::patch::write_code((base + off) as u64, bytes).is_ok()
}

/// The flags of a `clone` (its first argument) or `clone3` (the first word of its arguments).
fn clone_flags(nr: u64, di: u64) -> Option<u64> {
    match nr as i64 {
        libc::SYS_clone => Some(di),
        libc::SYS_clone3 => {
            let mut word = [0u8; 8];
            (read_own(di, &mut word) == 8).then(|| u64::from_ne_bytes(word))
        }
        _ => None,
    }
}

/// Whether the new thread pointer of `clone`/`clone3` call `nr` (arguments `args`) is a thread
/// control block as glibc makes them (its first word and its third point at itself), with
/// glibc's static TLS below it: our code runs on it in a new thread (a runtime's own makes the
/// thread go straight on).
fn glibc_thread_pointer(nr: u64, args: &[u64; 6]) -> bool {
    // clone's fifth argument, clone3's `tls` (at 56).
    let tls = if nr == libc::SYS_clone as u64 {
        args[4]
    } else {
        let mut word = [0u8; 8];
        if read_own(args[0].wrapping_add(56), &mut word) != 8 {
            return false;
        }
        u64::from_ne_bytes(word)
    };
    let mut tcb = [0u8; 24];
    read_own(tls, &mut tcb) == 24 && u64::from_ne_bytes(tcb[0..8].try_into().unwrap()) == tls && u64::from_ne_bytes(tcb[16..24].try_into().unwrap()) == tls
}

/// Calls a child made by the application's `fork` records before the agent's fork handler
/// runs in it (more: dispatch goes off until that handler turns it on again).
const FORK_CHILD_CALLS: usize = 64;

/// What a child made by glibc's `fork` did before the agent's fork handler ran in it
/// ([`after_fork`]): its fork's return (0) and its calls, in order. Until then it may not run
/// handlers: the cached process and thread ids are the parent's until the id caches' fork
/// handler runs, and fork handlers of the agent registered after ours still hold what their
/// prepare handlers took (the hook engine's locks and signal mask). Calls that cannot be
/// recorded (no room, one made in place) end the recording; the rest of the window runs with
/// dispatch off, unseen, and what was recorded is kept. Written only in the child, by its one
/// thread (a thread made in the window goes straight on, with no dispatch); the parent's copy
/// stays empty. A child whose fork ran no handlers (`_Fork`, raw calls) is not recorded: it
/// runs its handlers at once, its ids read afresh from then on.
struct ForkChild {
    /// From the fork's return until the fork handler took the record.
    window: AtomicBool,
    /// Calls are recorded (within the window, until one cannot be: dispatch is then off).
    recording: AtomicBool,
    len: AtomicUsize,
    /// The registers of the fork's return, then of each call (`ax`: its result) and its number.
    exit: std::cell::UnsafeCell<PtRegs>,
    calls: std::cell::UnsafeCell<[(PtRegs, u64); FORK_CHILD_CALLS]>,
}

// SAFETY: only the one thread of a fork child touches the cells (see `ForkChild`).
unsafe impl Sync for ForkChild {}

/// All-zero registers.
// SAFETY: `PtRegs` is plain integers, for which all zero bytes are a value.
const NO_REGS: PtRegs = unsafe { std::mem::zeroed() };

static FORK_CHILD: ForkChild = ForkChild {
    window: AtomicBool::new(false),
    recording: AtomicBool::new(false),
    len: AtomicUsize::new(0),
    exit: std::cell::UnsafeCell::new(NO_REGS),
    calls: std::cell::UnsafeCell::new([(NO_REGS, 0); FORK_CHILD_CALLS]),
};

impl ForkChild {
    /// In the child, at its fork's return (`exit`): records it, and its calls from now on.
    fn begin(&self, exit: &PtRegs) {
        // SAFETY: the child's only thread (see `ForkChild`).
        unsafe { *self.exit.get() = *exit };
        self.len.store(0, Ordering::Relaxed);
        // Its calls arrive as SIGSYS (a fork handler may have blocked it, and a dispatched
        // call with SIGSYS blocked kills).
        unblock_sigsys();
        let on = enable().is_ok();
        self.window.store(true, Ordering::Release);
        self.recording.store(on, Ordering::Release);
    }

    /// Between the fork's return and the fork handler: no handler may run.
    fn in_window(&self) -> bool {
        self.window.load(Ordering::Acquire)
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    /// A call that cannot be recorded: the rest of the window runs with dispatch off (unseen),
    /// what was recorded is kept.
    fn stop_recording(&self) {
        if self.recording.swap(false, Ordering::AcqRel) {
            disable();
        }
    }

    /// Whether another call can be recorded.
    fn has_room(&self) -> bool {
        self.len.load(Ordering::Relaxed) < FORK_CHILD_CALLS
    }

    /// Records call `regs` (as it was made) and its result; false where there is no room.
    fn record(&self, regs: &PtRegs, ret: u64) -> bool {
        let n = self.len.load(Ordering::Relaxed);
        if n == FORK_CHILD_CALLS {
            return false;
        }
        // SAFETY: the child's only thread; `n` is in bounds.
        unsafe { (*self.calls.get())[n] = (*regs, ret) };
        self.len.store(n + 1, Ordering::Relaxed);
        true
    }

    /// Ends the window: the fork's return and the calls recorded, if it was open.
    fn take(&self) -> Option<(PtRegs, &[(PtRegs, u64)])> {
        if !self.window.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.recording.store(false, Ordering::Release);
        let n = self.len.load(Ordering::Relaxed);
        // SAFETY: the child's only thread; nothing records once the flag is off.
        Some(unsafe { (*self.exit.get(), &(&*self.calls.get())[..n]) })
    }
}

/// In the child of a fork, from the agent's fork handler (its allocator and ids are the
/// child's now): turns dispatch on and runs the handlers on what the child did before.
fn after_fork() {
    hook::set_forking(false);
    let taken = FORK_CHILD.take();
    let _ = enable();
    let Some((exit, calls)) = taken else { return };
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.replace(0) };
    // Ids read afresh: the parent's cached ones may not be forgotten yet (other fork handlers).
    add_vfork_children(1);
    hook::on_handler_stack(|_| match (hook::admit(), HANDLER.get()) {
        (Admission::Run(level, before), Some(h)) => {
            h.on_exit(&exit, level);
            for (regs, ret) in calls {
                let _ = h.on_enter(regs, level);
                h.on_exit(&PtRegs { ax: *ret, ..*regs }, level);
            }
            hook::leave(before);
        }
        (Admission::Run(_, before), None) => hook::leave(before),
        (Admission::Miss, Some(h)) => {
            h.on_miss(exit.orig_ax);
            calls.iter().for_each(|(regs, _)| h.on_miss(regs.orig_ax));
        }
        _ => {}
    });
    add_vfork_children(-1);
    // SAFETY: back to what the application had.
    unsafe { selector.write(was) };
}

/// What a `vfork` child needs to turn dispatch on for itself, read by [`bpftime_vfork_child`]:
/// the SIGSYS action (clone3's `CLONE_CLEAR_SIGHAND` resets it in the child) and the selector's
/// offset from the thread pointer (the same for every thread: initial-exec TLS); and the
/// counter of `vfork` children under way that [`count_vfork_children`] names (0: none).
#[repr(C)]
struct VforkChildSetup {
    act: [AtomicU64; 4],
    selector_offset: AtomicU64,
    counter: AtomicU64,
}

static VFORK_CHILD: VforkChildSetup = VforkChildSetup { act: [const { AtomicU64::new(0) }; 4], selector_offset: AtomicU64::new(0), counter: AtomicU64::new(0) };

/// Names a counter that is 1 or more while a `vfork` child made here may run (counted by its
/// caller from just before the call until it goes on: it waits for exactly the child's time in
/// its memory): the child shares the caller's memory, so ids cached there are not its own.
pub fn count_vfork_children(counter: &'static std::sync::atomic::AtomicU32) {
    VFORK_CHILD.counter.store(counter as *const _ as u64, Ordering::Release);
}

/// Adds `by` to the counter [`count_vfork_children`] named, if any (never below 0).
fn add_vfork_children(by: i32) {
    let counter = VFORK_CHILD.counter.load(Ordering::Acquire) as *const std::sync::atomic::AtomicU32;
    // SAFETY: a `&'static AtomicU32` given to `count_vfork_children`, or null.
    if let Some(c) = unsafe { counter.as_ref() } {
        let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_add_signed(by));
    }
}

// `bpftime_vfork_child`: called by the gadget of a call that makes a `vfork` child, in the
// child (rax 0), before it goes on in the application: installs the SIGSYS action again and
// turns Syscall User Dispatch on for itself with its thread's selector (its caller's, which
// waits). Every register but rax (0) is kept; the gadget calls it 128 bytes below the stack
// pointer (past a red zone).
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl bpftime_vfork_child",
    ".hidden bpftime_vfork_child",
    ".type bpftime_vfork_child, @function",
    "bpftime_vfork_child:",
    "push rdi",
    "push rsi",
    "push rdx",
    "push r10",
    "push r8",
    "push r9",
    "push rcx",
    "push r11",
    // rt_sigaction(SIGSYS, &act, NULL, 8)
    "mov eax, 13",
    "mov edi, 31",
    "lea rsi, [rip + {setup}]",
    "xor edx, edx",
    "mov r10d, 8",
    "syscall",
    // prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, allowed, ALLOWED_LEN, selector)
    "mov eax, 157",
    "mov edi, 59",
    "mov esi, 1",
    "mov rdx, qword ptr [rip + {allowed}]",
    "mov r10d, {len}",
    "mov r8, qword ptr fs:[0]",
    "add r8, qword ptr [rip + {setup} + 32]",
    "syscall",
    "pop r11",
    "pop rcx",
    "pop r9",
    "pop r8",
    "pop r10",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    "xor eax, eax",
    "ret",
    ".size bpftime_vfork_child, . - bpftime_vfork_child",
    setup = sym VFORK_CHILD,
    allowed = sym ALLOWED,
    len = const ALLOWED_LEN,
);

extern "C" {
    /// See the assembly above; only ever jumped to by a gadget.
    fn bpftime_vfork_child();
}

/// Calls made in place whose caller sees exit handlers run (see the module documentation).
fn reports_exit(nr: u64) -> bool {
    [libc::SYS_clone, libc::SYS_clone3, libc::SYS_fork, libc::SYS_vfork, libc::SYS_execve, libc::SYS_execveat].contains(&(nr as i64))
}

/// What the new child of a call made in place does at its gadget.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChildPath {
    /// Goes straight on (or the call makes no child, or its caller is not told of it).
    Straight,
    /// A `vfork` child, which runs in its caller's memory and on its thread's thread-locals (no
    /// `CLONE_SETTLS`) while the caller waits for its `exec` or exit: calls
    /// [`bpftime_vfork_child`] first, which turns dispatch on for it, so its calls (the `dup2`s
    /// and `close`s of `posix_spawn`, an `exec`, one that fails) are seen as the kernel's
    /// tracepoints see them.
    Vfork,
    /// A thread of the application with thread-locals of its own (`CLONE_VM | CLONE_THREAD |
    /// CLONE_SETTLS`, as `pthread_create` makes, and [`glibc_thread_pointer`]): through an exit
    /// stub of its own, which sees the call return 0 as the kernel's tracepoints do and turns
    /// dispatch on before its first instruction (see [`in_place_exit`]), so the calls glibc
    /// makes as a thread starts (`rseq`, `set_robust_list`, `rt_sigprocmask`) are seen.
    Thread,
    /// A copy of this process made by the application (`fork`, or a `clone` without `CLONE_VM`
    /// or `CLONE_VFORK`): through an exit stub of its own, which records its return of 0 and
    /// its calls until the agent's fork handler runs in it (see [`FORK_CHILD`]), so glibc's
    /// `set_robust_list` in `_Fork` is seen.
    Fork,
}

impl ChildPath {
    /// The path for call `nr` with arguments `args`; `theirs`: the application's call (a
    /// thread or process the agent makes goes straight on).
    fn of(nr: u64, args: &[u64; 6], theirs: bool) -> ChildPath {
        const THREAD: u64 = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SETTLS) as u64;
        const SHARED: u64 = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        let flags = match nr as i64 {
            libc::SYS_vfork => return ChildPath::Vfork,
            libc::SYS_fork if theirs => return ChildPath::Fork,
            _ => match clone_flags(nr, args[0]) {
                Some(flags) => flags,
                None => return ChildPath::Straight,
            },
        };
        if flags & libc::CLONE_VFORK as u64 != 0 && flags & libc::CLONE_SETTLS as u64 == 0 {
            ChildPath::Vfork
        } else if theirs && flags & THREAD == THREAD && glibc_thread_pointer(nr, args) {
            ChildPath::Thread
        } else if theirs && flags & SHARED == 0 {
            ChildPath::Fork
        } else {
            ChildPath::Straight
        }
    }
}

/// What identifies a gadget: where it goes on, for calls whose exit is reported which call,
/// and what their child does (addresses use the low 47 bits).
fn gadget_key(ret: u64, nr: u64, exit: bool, child: ChildPath) -> u64 {
    let key = if exit { ret | (nr + 1) << 48 } else { ret };
    let (low, high) = match child {
        ChildPath::Straight => (0, 0),
        ChildPath::Vfork => (1, 0),
        ChildPath::Thread => (0, 1),
        ChildPath::Fork => (1, 1),
    };
    key | low << 47 | high << 63
}

/// Where an exit stub of a call made in place runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    /// In the caller.
    Caller,
    /// In the `vfork` child, once it turned dispatch on for itself.
    VforkChild,
    /// In the new thread (see [`ChildPath::Thread`]).
    NewThread,
    /// In the new process (see [`ChildPath::Fork`]).
    ForkChild,
}

/// A call made in place whose exit handlers run in the caller: what [`in_place_exit`] needs.
struct InPlaceCall {
    nr: u64,
    /// Where the caller goes on (after the original `syscall` instruction).
    ret: u64,
    /// Whether the call makes a `vfork` child (which counted itself: see
    /// [`count_vfork_children`]).
    vfork_child: bool,
    /// Where the stub runs.
    side: Side,
}

/// The gadget that makes call `nr` in place and goes on at `ret` (made on first use), through
/// a stub that runs the exit handlers first where `exit` (the caller only, for the calls that
/// make a child):
///
/// ```text
///  0: syscall
///  2: test rax, rax          (calls that make a child)
///  5: jz 13                  the new child goes straight on
///  7: jmp [rip + 6]          the caller, through the exit stub
/// 13: jmp [rip + 8] / jmp [rip + 0]
/// 19: exit stub address, 27: ret  /  with an exit stub for any other call: 0 syscall,
/// 2 jmp [rip + 0], 8 exit stub address  /  without: 0 syscall, 2 jmp [rip + 0], 8 ret
/// ```
///
/// A call that makes a `vfork` child (`vfork_child`) has the child call
/// [`bpftime_vfork_child`] first, then go through an exit stub of its own: 0 syscall, 2 test
/// rax, rax, 5 jz 13, 7 jmp [rip + 25], 13 lea rsp, [rsp - 128], 18 call [rip + 22], 24 lea
/// rsp, [rsp + 128], 32 jmp [rip + 16], 38 exit stub address, 46 its address, 54 the child's
/// exit stub address.
///
/// A call that makes a thread or a process of the application (`ChildPath::Thread`,
/// `ChildPath::Fork`) sends the child through an exit stub of its own: the first layout, with
/// that stub's address at 27.
///
/// An `optional` gadget (a call that could also be made in the signal handler) is not made in
/// the last [`GADGETS_KEPT`] slots, which are kept for the calls that must be made in place.
fn gadget(ret: u64, nr: u64, exit: bool, optional: bool, child: ChildPath) -> Option<u64> {
    let base = ALLOWED.load(Ordering::Acquire) as u64;
    if exit && nr >= 0x7fff {
        return None; // no call has such a number, and the key has no room for it
    }
    let child = if exit && reports_exit(nr) { child } else { ChildPath::Straight };
    let vfork_child = child == ChildPath::Vfork;
    let key = gadget_key(ret, nr, exit, child);
    for (i, slot) in GADGET_RETURNS.iter().enumerate() {
        let at = base + (FIRST_GADGET + i * GADGET_LEN) as u64;
        match slot.compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) if optional && i >= GADGETS - GADGETS_KEPT => {
                slot.store(0, Ordering::Release);
                return None;
            }
            Ok(_) => {
                let mut code = Vec::with_capacity(GADGET_LEN);
                code.extend_from_slice(&[0x0f, 0x05]); // syscall
                let exit_stub = |side: Side| {
                    let ctx: &'static InPlaceCall = Box::leak(Box::new(InPlaceCall { nr, ret, vfork_child, side }));
                    hook::syscall_stub(at, ctx as *const InPlaceCall as u64, in_place_exit as *const () as u64).ok()
                };
                let stub = if exit {
                    // (A child whose stub cannot be made goes straight on, as before.)
                    let child_stub = match child {
                        ChildPath::Straight => None,
                        ChildPath::Vfork => exit_stub(Side::VforkChild),
                        ChildPath::Thread => exit_stub(Side::NewThread),
                        ChildPath::Fork => exit_stub(Side::ForkChild),
                    }
                    .or(Some(ret));
                    let stubs = (exit_stub(Side::Caller), child_stub);
                    match stubs {
                        (Some(stub), Some(child_goes_to)) => Some((stub, child_goes_to)),
                        _ => {
                            slot.store(0, Ordering::Release);
                            return None;
                        }
                    }
                } else {
                    None
                };
                match stub {
                    Some((stub, child_goes_to)) if vfork_child => {
                        code.extend_from_slice(&[0x48, 0x85, 0xc0]); // test rax, rax
                        code.extend_from_slice(&[0x74, 0x06]); // jz 13
                        code.extend_from_slice(&[0xff, 0x25, 25, 0, 0, 0]); // jmp [38]
                        code.extend_from_slice(&[0x48, 0x8d, 0x64, 0x24, 0x80]); // lea rsp, [rsp - 128]
                        code.extend_from_slice(&[0xff, 0x15, 22, 0, 0, 0]); // call [46]
                        code.extend_from_slice(&[0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0]); // lea rsp, [rsp + 128]
                        code.extend_from_slice(&[0xff, 0x25, 16, 0, 0, 0]); // jmp [54]
                        code.extend_from_slice(&stub.to_le_bytes());
                        code.extend_from_slice(&(bpftime_vfork_child as *const () as u64).to_le_bytes());
                        code.extend_from_slice(&child_goes_to.to_le_bytes());
                    }
                    Some((stub, child_goes_to)) if reports_exit(nr) => {
                        code.extend_from_slice(&[0x48, 0x85, 0xc0]); // test rax, rax
                        code.extend_from_slice(&[0x74, 0x06]); // jz 13
                        code.extend_from_slice(&[0xff, 0x25, 6, 0, 0, 0]); // jmp [19]
                        code.extend_from_slice(&[0xff, 0x25, 8, 0, 0, 0]); // jmp [27]
                        code.extend_from_slice(&stub.to_le_bytes());
                        code.extend_from_slice(&child_goes_to.to_le_bytes());
                    }
                    Some((stub, _)) => {
                        code.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]); // jmp [8]
                        code.extend_from_slice(&stub.to_le_bytes());
                    }
                    None => {
                        code.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]); // jmp [8]
                        code.extend_from_slice(&ret.to_le_bytes());
                    }
                }
                let written = write_allowed(FIRST_GADGET + i * GADGET_LEN, &code);
                // Published once its code is there; a failed slot stays taken.
                if written {
                    slot.store(key, Ordering::Release);
                }
                return written.then_some(at);
            }
            Err(k) if k == key => return Some(at),
            Err(_) => {}
        }
    }
    None
}

/// Called by a gadget's exit stub in the caller of a call made in place (or in the child it
/// made: `call.side`), with its registers after the call (`ax` the result): runs the exit
/// handlers, then goes on after the original instruction with `cx` as the instruction leaves
/// it.
extern "C" fn in_place_exit(call: &InPlaceCall, regs: &mut PtRegs) {
    let caller = call.side == Side::Caller;
    // A `vfork` child ran on this thread's thread-locals: what it left there is not ours (it
    // may have died inside our code, which then never put them back).
    if call.vfork_child && caller {
        hook::restore_vfork_parent();
    }
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.replace(0) };
    regs.orig_ax = call.nr;
    regs.ip = call.ret;
    // What the instruction leaves in rcx (rflags in r11 stays for the handlers; the stub then
    // goes on at r11).
    regs.cx = call.ret;
    // A fork child made by glibc's `fork`, whose fork handlers will run: recorded (see
    // `ForkChild`). One made by a raw call (`_Fork`, `clone`, `syscall(SYS_fork)`), which runs
    // none: its ids are read afresh from now on, and its handlers run now.
    if call.side == Side::ForkChild {
        reinstall_sigsys();
        if hook::forking() {
            FORK_CHILD.begin(regs);
            regs.r11 = call.ret;
            // SAFETY: back to what the application had.
            unsafe { selector.write(was) };
            return;
        }
        add_vfork_children(1);
    }
    // A failed `execve` gives the caller its own environment array back (the call keeps rdx
    // and r10).
    match call.nr as i64 {
        libc::SYS_execve => unmark_exec(&mut regs.dx),
        libc::SYS_execveat => unmark_exec(&mut regs.r10),
        _ => {}
    }
    // The vfork child it made (if any) has exec'd or exited: it no longer runs in our memory.
    if call.vfork_child && caller {
        add_vfork_children(-1);
    }
    match (hook::admit(), HANDLER.get()) {
        (Admission::Run(level, before), Some(h)) => {
            h.on_exit(regs, level);
            hook::leave(before);
        }
        (Admission::Miss, Some(h)) => h.on_miss(call.nr),
        _ => {}
    }
    // A new thread or process: dispatch on before its first instruction of the application's
    // (glibc starts a thread with every signal blocked, and a dispatched call with SIGSYS
    // blocked kills).
    if matches!(call.side, Side::NewThread | Side::ForkChild) {
        unblock_sigsys();
        let _ = enable();
    }
    regs.r11 = call.ret;
    // SAFETY: back to what the application had.
    unsafe { selector.write(was) };
}

/// The variable [`mark_execs`] adds to the environment of the `execve`s made here, and the
/// agent's file name.
static EXEC_MARKER: OnceLock<(&'static str, &'static [u8], fn() -> String)> = OnceLock::new();

/// Adds `VAR=PID.TID` (this process's id, which an exec keeps, and the calling thread's, which
/// the kernel reports as the exec's `old_pid`) to the environment of the `execve`s and
/// `execveat`s this process makes in place while its calls are intercepted (in a copy of the
/// array; the application's is put back if the call fails), so that the image it starts can
/// tell that the call was seen here: one that does not find its own id there was started by a
/// caller whose calls were not seen (a process without the agent, `bpftime start`). What
/// `more` gives (made as the call is marked) follows the thread's id. Left unmarked: arrays
/// that cannot be read or have more than [`MOST_ENV_ENTRIES`] entries, and execs nested deeper
/// than [`MARK_SLOTS`].
/// Only an environment whose `LD_PRELOAD` names the agent (`agent_file`) is marked.
pub fn mark_execs(var: &'static str, agent_file: &'static [u8], more: fn() -> String) {
    let _ = EXEC_MARKER.set((var, agent_file, more));
}

/// Most environment entries a marked `execve` copies (more: left unmarked).
const MOST_ENV_ENTRIES: usize = 1 << 16;

/// Marked `execve`s a thread may have under way at once (a signal handler's exec may come
/// between another's mark and its call).
const MARK_SLOTS: usize = 4;

thread_local! {
    /// The signal mask of the application's code whose call this thread's SIGSYS handler is
    /// running the handlers of (the thread's own mask is our handler's meanwhile).
    static APP_MASK: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// In a [`SyscallHandler`] run from the SIGSYS handler: the signals the application's code that
/// made the call blocks (as a 64-bit kernel mask); None elsewhere (a rewritten call site's stub
/// runs with the application's own mask, which `/proc/thread-self/status` shows).
pub fn application_signal_mask() -> Option<u64> {
    APP_MASK.get()
}

thread_local! {
    /// The environment arrays this thread's marked `execve`s were given instead of their own,
    /// while their calls are under way: (the copy, its words, the application's, the marking
    /// process's id); 0: a free slot. No destructor (and no allocation to register one): the
    /// copies of the calls that succeeded went with the image, but for those a `vfork` child
    /// made (sharing this thread's memory and thread-locals), which the next mark here frees.
    static MARKED: std::cell::Cell<[(u64, usize, u64, u64); MARK_SLOTS]> = const { std::cell::Cell::new([(0, 0, 0, 0); MARK_SLOTS]) };
}

/// Replaces the environment array `*envp` of `execve` or `execveat` call `nr` with a copy that
/// ends with the exec marker, if there is one.
fn mark_exec(nr: u64, envp: &mut u64) {
    let Some(&(var, agent_file, more)) = EXEC_MARKER.get() else { return };
    if nr != libc::SYS_execve as u64 && nr != libc::SYS_execveat as u64 {
        return;
    }
    let Some(entries) = pointer_array(*envp, MOST_ENV_ENTRIES) else { return };
    // Only for an image that will have the agent: a mark must not show in the environment of
    // a program started without it (`env -i`, a scrubbed environment).
    if !entries.iter().any(|&e| preloads_agent(e, agent_file)) {
        return;
    }
    let _ = MARKED.try_with(|m| {
        // SAFETY: getpid(2), by our own instruction.
        let pid = unsafe { raw_syscall(libc::SYS_getpid as u64, [0; 6]) };
        // SAFETY: getppid(2), by our own instruction.
        let parent = unsafe { raw_syscall(libc::SYS_getppid as u64, [0; 6]) };
        let mut slots = m.get();
        // A `vfork` child's marks, made in this thread's memory: their calls are over (in a
        // vfork child, its parent's are not, and stay).
        for slot in slots.iter_mut().filter(|s| s.0 != 0 && s.3 != pid && s.3 != parent) {
            // SAFETY: made by this function as a boxed slice of `slot.1` words, no longer in
            // use (the process that marked it has exec'd or exited, or waits in `vfork`).
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(slot.0 as *mut u64, slot.1)) });
            *slot = (0, 0, 0, 0);
        }
        let Some(free) = slots.iter().position(|s| s.0 == 0) else { return };
        // SAFETY: gettid(2), by our own instruction.
        let tid = unsafe { raw_syscall(libc::SYS_gettid as u64, [0; 6]) };
        let text = format!("{var}={pid}.{tid}{}\0", more());
        let n = entries.len();
        let words = n + 2 + text.len().div_ceil(8);
        let mut copy = vec![0u64; words].into_boxed_slice();
        copy[..n].copy_from_slice(&entries);
        let at = copy[n + 2..].as_mut_ptr() as *mut u8;
        // SAFETY: the words after the array's NULL hold the text (its length rounded up).
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), at, text.len()) };
        copy[n] = at as u64;
        let copy = Box::into_raw(copy) as *mut u64 as u64;
        slots[free] = (copy, words, *envp, pid);
        m.set(slots);
        *envp = copy;
    });
}

/// Puts back the application's environment array where [`mark_exec`] replaced it (the call
/// failed), and frees the copy.
fn unmark_exec(envp: &mut u64) {
    let _ = MARKED.try_with(|m| {
        let mut slots = m.get();
        let Some(i) = slots.iter().position(|s| s.0 != 0 && s.0 == *envp) else { return };
        let (copy, words, own, _) = slots[i];
        slots[i] = (0, 0, 0, 0);
        m.set(slots);
        *envp = own;
        // SAFETY: made by `mark_exec` as a boxed slice of `words` words, and no longer in use
        // (its call returned). Freed as our own work (it may unmap).
        hook::without_probes(|| drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(copy as *mut u64, words)) }));
    });
}

/// Whether the environment entry at `at` is an `LD_PRELOAD` that names the agent (file name
/// `agent_file`, or `libbpftime_early.so`), read without faulting.
fn preloads_agent(at: u64, agent_file: &[u8]) -> bool {
    let mut buf = [0u8; 1024];
    let got = read_own(at, &mut buf);
    let entry = &buf[..got];
    let entry = entry.iter().position(|&b| b == 0).map_or(entry, |n| &entry[..n]);
    entry.strip_prefix(b"LD_PRELOAD=").is_some_and(|v| names_agent(v, agent_file))
}

/// Whether an `LD_PRELOAD` value (paths separated by spaces or colons) names the agent (file
/// name `agent_file`, or `libbpftime_early.so`).
pub fn names_agent(value: &[u8], agent_file: &[u8]) -> bool {
    value.split(|&b| b == b':' || b == b' ').any(|path| {
        let file = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        file == agent_file || file == b"libbpftime_early.so"
    })
}

/// Reads this process's memory at `at` into `buf` without faulting; how many bytes were read
/// (a read stops at the first unreadable page).
pub(crate) fn read_own(at: u64, buf: &mut [u8]) -> usize {
    // SAFETY: raw_syscall's contract, passed on: our calls below.
    read_own_by(|nr, args| unsafe { raw_syscall(nr as u64, args) }, at, buf)
}

/// [`read_own`] with our own calls ([`own_call`]): for a thread whose dispatch is on while it
/// runs a handler of ours with the application's selector. (Not where the thread pointer may
/// be the application's own: the selector is a thread-local.)
fn read_own_as_ours(at: u64, buf: &mut [u8]) -> usize {
    // SAFETY: own_call's contract, passed on: our calls below.
    read_own_by(|nr, args| unsafe { own_call(nr, args) }, at, buf)
}

/// [`read_own`], its two system calls made by `call`, which must make them as given.
fn read_own_by(call: impl Fn(libc::c_long, [u64; 6]) -> u64, at: u64, buf: &mut [u8]) -> usize {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: at as *mut libc::c_void, iov_len: buf.len() };
    // getpid(2), then process_vm_readv(2) on ourselves, which writes at most `buf`'s bytes into
    // it and checks the remote range itself.
    let pid = call(libc::SYS_getpid, [0; 6]);
    let got = call(libc::SYS_process_vm_readv, [pid, &local as *const _ as u64, 1, &remote as *const _ as u64, 1, 0]);
    if (got as i64) < 0 {
        0
    } else {
        got as usize
    }
}

/// The entries of the NULL-terminated array of pointers at `at` (none for a null `at`, as the
/// kernel takes it), read without faulting; None if it cannot be read or has more than `most`.
fn pointer_array(at: u64, most: usize) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    if at == 0 {
        return Some(out);
    }
    loop {
        let from = at.checked_add(out.len() as u64 * 8)?;
        let mut bytes = [0u8; 512];
        let got = read_own(from, &mut bytes);
        if got < 8 {
            return None;
        }
        for word in bytes[..got / 8 * 8].chunks_exact(8) {
            let w = u64::from_ne_bytes(word.try_into().unwrap_or_default());
            if w == 0 {
                return Some(out);
            }
            if out.len() == most {
                return None;
            }
            out.push(w);
        }
    }
}

/// SIGSYS's bit in a signal mask: never blocked while calls are intercepted (a call made with
/// it blocked would kill the process).
const SIGSYS_BIT: u64 = 1 << (libc::SIGSYS - 1);
/// SIGTRAP's bit: never blocked either. Code being patched holds a transient `int3`, and a
/// thread that meets one with SIGTRAP blocked is killed by the kernel (the Go runtime and
/// glibc start threads with every signal blocked; their first system calls run through sites
/// another thread may be rewriting).
const SIGTRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);
/// Bits no mask may hold.
const UNBLOCKABLE: u64 = SIGSYS_BIT | SIGTRAP_BIT | 1 << (libc::SIGKILL - 1) | 1 << (libc::SIGSTOP - 1);
/// What our SIGSYS handler blocks while it runs: every asynchronous signal (its work runs on
/// the thread's handler stack, off the signal stack, where one must not land), not the faults
/// and traps, which are the thread's own doing (and SIGTRAP runs int3 probes).
const SIGSYS_HANDLER_MASK: u64 =
    !(UNBLOCKABLE | 1 << (libc::SIGSEGV - 1) | 1 << (libc::SIGBUS - 1) | 1 << (libc::SIGILL - 1) | 1 << (libc::SIGFPE - 1) | 1 << (libc::SIGTRAP - 1));

/// Sets this thread's signal mask (rt_sigprocmask(2) `SIG_SETMASK`, made directly: the
/// selector allows our calls).
fn set_signal_mask(mask: u64) {
    // SAFETY: rt_sigprocmask with a valid 8-byte set and no old set.
    unsafe { raw_syscall(libc::SYS_rt_sigprocmask as u64, [libc::SIG_SETMASK as u64, &mask as *const u64 as u64, 0, 8, 0, 0]) };
}

/// `rt_sigprocmask(how, set, oldset, size)` on `mask` (the mask the thread will run with).
fn emulate_sigprocmask(mask: &mut u64, a: [u64; 4]) -> u64 {
    let einval = -(libc::EINVAL as i64) as u64;
    if a[3] != 8 {
        return einval;
    }
    let (set, old) = (a[1] as *const u64, a[2] as *mut u64);
    let new = if set.is_null() {
        None
    } else {
        // SAFETY: the application's pointer to a sigset (as the kernel, a bad one faults).
        Some(unsafe { set.read_unaligned() })
    };
    let next = match (a[0] as i32, new) {
        (_, None) => *mask,
        (libc::SIG_BLOCK, Some(n)) => *mask | n,
        (libc::SIG_UNBLOCK, Some(n)) => *mask & !n,
        (libc::SIG_SETMASK, Some(n)) => n,
        _ => return einval,
    };
    if !old.is_null() {
        // SAFETY: the application's pointer to a sigset.
        unsafe { old.write_unaligned(*mask) };
    }
    *mask = next & !UNBLOCKABLE;
    0
}

/// The arguments of a call made here, with SIGSYS and SIGTRAP taken out of a mask being
/// installed (`rt_sigprocmask` reads the set through `copy`) and, for the application's calls
/// (`theirs`; ours set them), their actions kept (an `rt_sigaction` that would change them
/// only reads them).
fn keep_sigsys_open(nr: u64, mut a: [u64; 6], copy: &mut [u64; 4], theirs: bool) -> [u64; 6] {
    if theirs && nr == libc::SYS_rt_sigaction as u64 && (a[0] == libc::SIGSYS as u64 || a[0] == libc::SIGTRAP as u64) {
        a[1] = 0;
    }
    // A handler that would block SIGSYS while it runs (Go's runtime installs its handlers with
    // every signal blocked, by the raw call) blocks neither it nor SIGTRAP: its own calls and
    // its return are dispatched, and it may meet an int3 (the kernel's struct: handler, flags,
    // restorer, mask).
    if theirs && nr == libc::SYS_rt_sigaction as u64 && a[1] != 0 && a[3] == 8 {
        let mut act = [0u8; 32];
        if read_own(a[1], &mut act) == act.len() {
            *copy = std::array::from_fn(|i| u64::from_ne_bytes(act[i * 8..i * 8 + 8].try_into().unwrap_or_default()));
            if copy[3] & (SIGSYS_BIT | SIGTRAP_BIT) != 0 {
                copy[3] &= !(SIGSYS_BIT | SIGTRAP_BIT);
                a[1] = copy.as_mut_ptr() as u64;
            }
        }
    }
    if nr == libc::SYS_rt_sigprocmask as u64 && a[1] != 0 && (a[0] as i32 == libc::SIG_BLOCK || a[0] as i32 == libc::SIG_SETMASK) {
        // SAFETY: the application's pointer to a sigset, read as the kernel would.
        copy[0] = unsafe { (a[1] as *const u64).read_unaligned() } & !(SIGSYS_BIT | SIGTRAP_BIT);
        a[1] = copy.as_mut_ptr() as u64;
    }
    a
}

/// Sends the thread of a SIGSYS to make its call in place, through a gadget that goes on at
/// the call's return address (through a stub that runs the exit handlers where `exit`). False
/// where no gadget is left.
fn make_in_place(g: &mut [i64; 23], nr: u64, exit: bool, child: ChildPath) -> Option<bool> {
    match gadget_or_plain(g[libc::REG_RIP as usize] as u64, nr, exit, !in_place(nr), child) {
        Some((at, seen)) => {
            if child == ChildPath::Vfork && seen && reports_exit(nr) {
                add_vfork_children(1);
            }
            g[libc::REG_RIP as usize] = at as i64;
            Some(seen)
        }
        None => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if in_place(nr) && !SAID.swap(true, Ordering::Relaxed) {
                eprintln!("bpftime: no room left for in-place system call gadgets");
            }
            None
        }
    }
}

/// The [`gadget`] for call `nr`, and whether its exit is seen (`exit`); where a call that must
/// be made in place finds no memory for its exit stubs, one without them: the call is made,
/// unseen on its way out and its child straight on, rather than refused.
fn gadget_or_plain(ret: u64, nr: u64, exit: bool, optional: bool, child: ChildPath) -> Option<(u64, bool)> {
    let plain = || (exit && in_place(nr)).then(|| gadget(ret, nr, false, optional, ChildPath::Straight)).flatten();
    gadget(ret, nr, exit, optional, child).map(|at| (at, exit)).or_else(|| plain().map(|at| (at, false)))
}

/// Makes the call of a SIGSYS here, with raw system calls only (no function of libc: its
/// calls would come back through our stubs): not one that must be made in place. `mask` is
/// the signal mask the thread returns to (an `rt_sigprocmask` changes it); `theirs`, whether
/// the call is the application's (see [`keep_sigsys_open`]).
fn make_here(g: &mut [i64; 23], mask: &mut u64, theirs: bool) {
    let regs = PtRegs::from_gregs(g);
    let nr = regs.orig_ax;
    let ret = if nr == libc::SYS_rt_sigprocmask as u64 {
        // The mask a handler sets is undone by its return: the one the thread returns to is
        // in the signal context.
        emulate_sigprocmask(mask, [regs.di, regs.si, regs.dx, regs.r10])
    } else {
        let mut copy = [0u64; 4];
        let args = keep_sigsys_open(nr, [regs.di, regs.si, regs.dx, regs.r10, regs.r8, regs.r9], &mut copy, theirs);
        // SAFETY: the application's own call, with its own arguments (a change of our signals'
        // actions left out), from a SIGSYS handler whose selector allows it; it is not one
        // that must run in place.
        unsafe { app_syscall(nr, args) }
    };
    g[libc::REG_RAX as usize] = ret as i64;
    // What the `syscall` instruction leaves in rcx and r11.
    g[libc::REG_RCX as usize] = g[libc::REG_RIP as usize];
    g[libc::REG_R11 as usize] = g[libc::REG_EFL as usize];
}

/// Whether `addr` lies on the signal stack `ss` (as the context of a signal gives it).
fn on_signal_stack(addr: u64, ss: &libc::stack_t) -> bool {
    let lo = ss.ss_sp as u64;
    ss.ss_flags & libc::SS_DISABLE == 0 && addr >= lo && addr - lo < ss.ss_size as u64
}

/// Leaves this thread out of system call interception for good, from its SIGSYS handler, with
/// no thread-local of ours (see [`hook::libc_thread_pointer`]): dispatch off (by the allowed range's
/// copy of the call routine, which the kernel lets through by its address), and the call made
/// again natively when the handler returns.
fn leave_interception(g: &mut [i64; 23]) {
    // SAFETY: prctl(2) PR_SYS_DISPATCH_OFF takes no pointers.
    unsafe { app_syscall(libc::SYS_prctl as u64, [PR_SET_SYSCALL_USER_DISPATCH as u64, 0, 0, 0, 0, 0]) };
    g[libc::REG_RIP as usize] -= 2;
    FOREIGN_THREADS.fetch_add(1, Ordering::Relaxed);
}

/// Threads left out of interception because their thread pointer is not (or was about to stop
/// being) glibc's.
static FOREIGN_THREADS: AtomicU64 = AtomicU64::new(0);

/// How many threads left system call interception because they took a thread pointer of their
/// own (`arch_prctl(ARCH_SET_FS)`, as Go's runtime does without cgo): their calls are no longer
/// seen (the agent's link follower says so on stderr).
pub fn threads_left_out() -> u64 {
    FOREIGN_THREADS.load(Ordering::Relaxed)
}

extern "C" fn on_sigsys(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // A thread running on a thread pointer of its own cannot run our code (its thread-locals
    // are read through it): it goes on without interception. (SIGSYS has no other source that
    // such a thread would meet: a seccomp filter's goes to the application's handler, which
    // reads no thread-local of ours either way.)
    if !hook::libc_thread_pointer() {
        // SAFETY: the kernel passes valid siginfo and ucontext to an SA_SIGINFO handler.
        let (code, uc) = unsafe { ((*info).si_code, &mut *(ctx as *mut libc::ucontext_t)) };
        if code == SYS_USER_DISPATCH {
            leave_interception(&mut uc.uc_mcontext.gregs);
        }
        return;
    }
    // Our own calls from here on go to the kernel.
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.replace(0) };
    // SAFETY: the kernel passes valid siginfo and ucontext to an SA_SIGINFO handler.
    let (code, uc) = unsafe { ((*info).si_code, &mut *(ctx as *mut libc::ucontext_t)) };
    // SAFETY: sigset_t starts with the 64 signals' bits on x86-64.
    let uc_mask = unsafe { &mut *(&mut uc.uc_sigmask as *mut libc::sigset_t as *mut u64) };
    if code != SYS_USER_DISPATCH {
        // A seccomp SIGSYS, or one sent by someone: the application's, with its mask.
        set_signal_mask(*uc_mask);
        // SAFETY: restoring the byte we saved.
        unsafe { selector.write(was) };
        crate::signals::forward(sig, info, ctx);
        return;
    }
    if FORK_CHILD.in_window() {
        let g = &mut uc.uc_mcontext.gregs;
        let regs = PtRegs::from_gregs(g);
        if !FORK_CHILD.recording() || in_place(regs.orig_ax) || !FORK_CHILD.has_room() {
            // No room, or a call that cannot be made here: dispatch off, the call made again.
            FORK_CHILD.stop_recording();
            disable();
            g[libc::REG_RIP as usize] -= 2;
        } else {
            make_here(g, uc_mask, true);
            FORK_CHILD.record(&regs, g[libc::REG_RAX as usize] as u64);
        }
        // SAFETY: restoring the byte we saved.
        unsafe { selector.write(was) };
        return;
    }
    // Where the signal's frame is: on the thread's signal stack while the application was not
    // (our handler is SA_ONSTACK), the application's call cannot be made here, where its own
    // signals would find the signal stack taken and their handlers the wrong stack.
    let frame_apart = on_signal_stack(ctx as u64, &uc.uc_stack) && !on_signal_stack(uc.uc_mcontext.gregs[libc::REG_RSP as usize] as u64, &uc.uc_stack);
    let g = &mut uc.uc_mcontext.gregs;
    // The `syscall` instruction: the thread stopped after it.
    let site = (g[libc::REG_RIP as usize] as u64).wrapping_sub(2);
    let mut regs = PtRegs::from_gregs(g);
    let nr = regs.orig_ax;
    // A thread about to take a thread pointer of its own (Go's runtime without cgo, at its
    // start) could not run our code once its call is made (our thread-locals are read through
    // it): it makes the call natively and goes on without interception, its site left as it
    // is. (The kernel's tracepoints see this call and those after it; we do not.)
    if nr == libc::SYS_arch_prctl as u64 && regs.di == ARCH_SET_FS {
        // SAFETY: restoring the byte we saved, before the thread pointer changes.
        unsafe { selector.write(was) };
        leave_interception(g);
        return;
    }
    // Our work on the thread's handler stack: the signal may have landed on a small stack (a
    // goroutine's, or a signal stack). The call itself in the application's own context
    // (through a jump at the site, or a gadget), or back where the signal landed with the
    // application's mask.
    let mut at_the_site = false;
    // Whether the call, made in place, makes a `vfork` child (see `site_dispatch`).
    let mut vfork_call = false;
    hook::on_handler_stack(|left| {
        // A site that takes a jump (rewritten now, where one can be put in, or before) makes
        // the call there: the thread goes back to the instruction, whose stub runs the
        // handlers and the call. Not for calls that never return (patching costs more than a
        // signal), nor where we could not leave the signal's stack (the rewriting's own work
        // is deep).
        let never_returns = matches!(nr as i64, libc::SYS_exit | libc::SYS_exit_group);
        if left.is_some() && !never_returns && hook::without_probes(|| rewrite_once(site)) {
            at_the_site = true;
            return;
        }
        // The application's mask, for handlers that ask (the thread's is ours meanwhile).
        let outer_mask = APP_MASK.replace(Some(*uc_mask));
        around_call(&mut regs, |regs, skip, theirs, entered| {
            // (Again, for a restart: the number, where the call left its result.)
            g[libc::REG_RAX as usize] = nr as i64;
            if let (Some(rc), false) = (skip, in_place(nr)) {
                // Not made: its result, and what the `syscall` instruction leaves in rcx and r11.
                g[libc::REG_RAX as usize] = rc as i64;
                g[libc::REG_RCX as usize] = g[libc::REG_RIP as usize];
                g[libc::REG_R11 as usize] = g[libc::REG_EFL as usize];
                regs.ax = rc;
                return true;
            }
            // (`rt_sigprocmask` is emulated here, on the context's mask, so that SIGSYS stays
            // open: it is never made in place.)
            if in_place(nr) || (frame_apart && nr != libc::SYS_rt_sigprocmask as u64) {
                // Its exit handlers run from the gadget's stub (for the calls that must be made
                // in place, only where the caller comes back with a result of its own).
                let exit = !in_place(nr) || reports_exit(nr);
                let child = ChildPath::of(nr, &[regs.di, regs.si, regs.dx, regs.r10, regs.r8, regs.r9], theirs);
                if let Some(seen) = make_in_place(g, nr, exit, child) {
                    vfork_call = child == ChildPath::Vfork && seen;
                    if entered && seen {
                        let envp = if nr == libc::SYS_execve as u64 { libc::REG_RDX } else { libc::REG_R10 };
                        let mut at = g[envp as usize] as u64;
                        mark_exec(nr, &mut at);
                        g[envp as usize] = at as i64;
                    }
                    return false;
                }
                if in_place(nr) {
                    g[libc::REG_RAX as usize] = -(libc::ENOSYS as i64);
                    return false;
                }
            }
            // The application's signals, its mask back on, interrupt its call as ever.
            hook::back_on(left, || {
                let mut made = || {
                    set_signal_mask(*uc_mask);
                    make_here(g, uc_mask, theirs);
                    set_signal_mask(*uc_mask | SIGSYS_HANDLER_MASK);
                };
                if theirs {
                    hook::making_application_call(made)
                } else {
                    made()
                }
            });
            regs.ax = g[libc::REG_RAX as usize] as u64;
            true
        });
        APP_MASK.set(outer_mask);
    });
    if at_the_site {
        g[libc::REG_RIP as usize] = site as i64;
    }
    // SAFETY: back to what the interrupted flow had (BLOCK for application code); the return
    // goes through our restorer, in the allowed range.
    unsafe { selector.write(was) };
    if vfork_call {
        hook::note_vfork_parent();
    }
}

/// A `syscall` instruction rewritten into `jmp rel8` to alignment padding nearby, which holds
/// a `jmp rel32` to the site's stub (see `hook::syscall_stub`): two bytes, so that a thread
/// stopped in the call (after the instruction) or restarting it (at it) finds the code as it
/// expects. The stub calls [`site_dispatch`].
struct CallSite {
    /// Address of the `syscall` instruction.
    addr: u64,
    /// The padding its jump goes through.
    pad: u64,
    /// Its slot among the patched sites (see `patch::register_site`).
    slot: usize,
}

/// Sites tried so far (None: could not be rewritten; calls there keep arriving as signals),
/// and the padding slots taken.
struct Rewrites {
    sites: std::collections::HashMap<u64, Option<&'static CallSite>>,
    pads: Vec<u64>,
}

static REWRITES: std::sync::Mutex<Option<Rewrites>> = std::sync::Mutex::new(None);
/// Sites rewritten (diagnostics).
pub static SITES_REWRITTEN: AtomicU64 = AtomicU64::new(0);

/// Whether `[start, start + len)` overlaps padding a rewritten system call site jumps through.
/// Called with the patch lock held.
pub(crate) fn overlaps_pads(start: u64, len: u64) -> bool {
    // Waited for: its holders never wait while they hold it (they try the patch lock, which
    // our callers hold, and let go when they cannot have it); a guess while a thread held it
    // failed every probe attached while the application made system calls. Not for ever: a
    // child forked while another thread held it has it held for good (then: an overlap).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        match REWRITES.try_lock() {
            Ok(g) => return g.as_ref().is_some_and(|r| r.pads.iter().any(|&p| p < start + len && start < p + 5)),
            Err(std::sync::TryLockError::Poisoned(e)) => {
                return e.into_inner().as_ref().is_some_and(|r| r.pads.iter().any(|&p| p < start + len && start < p + 5))
            }
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        }
    }
}

/// Rewrites the call site at `site` unless it was tried before; whether it takes a jump now.
/// (Where another thread is busy rewriting or patching, this call stays a signal, and the
/// next one tries again.)
fn rewrite_once(site: u64) -> bool {
    let Ok(mut guard) = REWRITES.try_lock() else { return false };
    let r = guard.get_or_insert_with(|| Rewrites { sites: Default::default(), pads: vec![] });
    match r.sites.get(&site) {
        // A site rewritten before whose bytes are a `syscall` again (the library was unloaded
        // and another, or the same, loaded there): forgotten, and tried afresh.
        Some(Some(old)) if is_syscall_instruction(site) => {
            let (pad, slot) = (old.pad, old.slot);
            r.pads.retain(|&p| p != pad);
            crate::patch::release_site(slot);
            r.sites.remove(&site);
        }
        Some(done) => return done.is_some(),
        None => {}
    }
    // Probes are attached under the patch lock: the padding they use is known while it is held.
    let Ok(_patching) = crate::patch::PATCH_LOCK.try_lock() else { return false };
    let done = rewrite(site, &mut r.pads);
    if done.is_some() {
        SITES_REWRITTEN.fetch_add(1, Ordering::Relaxed);
    }
    r.sites.insert(site, done);
    done.is_some()
}

/// Whether the bytes at `site` are a `syscall` instruction.
fn is_syscall_instruction(site: u64) -> bool {
    let mut code = [0u8; 2];
    crate::patch::read_memory(site, &mut code).is_ok() && code == [0x0f, 0x05]
}

/// Rewrites the call site at `site` (the patch lock held).
fn rewrite(site: u64, pads: &mut Vec<u64>) -> Option<&'static CallSite> {
    // The bytes as they are (a debugger's breakpoint on the instruction leaves it alone).
    let mut code = [0u8; 2];
    crate::patch::read_memory(site, &mut code).ok()?;
    if code != [0x0f, 0x05] {
        return None;
    }
    // `jmp rel8` reaches [site + 2 - 128, site + 2 + 127].
    let (lo, hi) = (site + 2 - 128, site + 2 + 127);
    let pad = crate::symbols::padding_near(site, lo, hi, 5, |a| pads.contains(&a) || crate::patch::overlaps(a, 5))?;
    // A thread meeting the transient int3 at the site goes on at the pad (then the stub).
    let slot = crate::patch::register_site(site, 2, pad, &[], 0)?;
    let ctx: &'static CallSite = Box::leak(Box::new(CallSite { addr: site, pad, slot }));
    let jumped = (|| {
        let stub = hook::syscall_stub(pad, ctx as *const CallSite as u64, site_dispatch as *const () as u64).ok()?;
        let rel = i32::try_from(stub as i64 - (pad + 5) as i64).ok()?;
        let mut jump = [0xe9, 0, 0, 0, 0];
        jump[1..].copy_from_slice(&rel.to_le_bytes());
        // Padding runs nothing: the jump can be written as it is.
        crate::patch::write_code(pad, &jump).ok()
    })();
    if jumped.is_none() {
        crate::patch::release_site(slot);
        return None;
    }
    pads.push(pad);
    let rel8 = (pad as i64 - (site + 2) as i64) as i8;
    crate::patch::install_short(site, [0xeb, rel8 as u8]).ok()?;
    Some(ctx)
}

/// Called by a rewritten site's stub with the thread's registers at the `syscall` instruction
/// (`ax` the call number): runs the handlers and the call as the SIGSYS path does, and leaves
/// in `r11` where the thread goes on (after the instruction, or a gadget for calls made in
/// place).
extern "C" fn site_dispatch(site: &CallSite, regs: &mut PtRegs) {
    let after = site.addr + 2;
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.replace(0) };
    let nr = regs.ax;
    regs.orig_ax = nr;
    regs.ip = after;
    let args = [regs.di, regs.si, regs.dx, regs.r10, regs.r8, regs.r9];
    // A thread whose calls are not intercepted (one the agent made, starting): not seen.
    if !hook::dispatch_on() && !in_place(nr) {
        let mut copy = [0u64; 4];
        let args = keep_sigsys_open(nr, args, &mut copy, false);
        // SAFETY: the thread's own call and arguments, made with the selector at ALLOW; not one
        // that must run in place.
        regs.ax = unsafe { raw_syscall(nr, args) };
        regs.cx = after;
        regs.r11 = after;
        // SAFETY: back to what the thread had.
        unsafe { selector.write(was) };
        return;
    }
    // A fork child before the agent's fork handler: its calls recorded, or unseen once that
    // stopped (see `ForkChild`); not those of our own fork handlers. One made in place goes
    // through a gadget with no handlers, its child straight on.
    if FORK_CHILD.in_window() && !hook::in_probe() {
        if in_place(nr) {
            // (A gadget made now is our own work.)
            regs.r11 = hook::without_probes(|| gadget(after, nr, false, false, ChildPath::Straight)).unwrap_or_else(|| {
                regs.ax = -(libc::ENOSYS as i64) as u64;
                after
            });
        } else {
            let before = *regs;
            let mut copy = [0u64; 4];
            let args = keep_sigsys_open(nr, args, &mut copy, true);
            // SAFETY: the application's own call and arguments, made with the selector at
            // ALLOW; not one that must run in place.
            regs.ax = unsafe { app_syscall(nr, args) };
            regs.cx = after;
            regs.r11 = after;
            if !(FORK_CHILD.recording() && FORK_CHILD.record(&before, regs.ax)) {
                FORK_CHILD.stop_recording();
            }
        }
        // SAFETY: back to what the application had.
        unsafe { selector.write(was) };
        return;
    }
    // Whether the call makes a `vfork` child: told while our work runs (clone3's arguments
    // are read by a system call of ours, which must not be taken for the application's).
    let vfork_call = std::cell::Cell::new(false);
    let call = |regs: &mut PtRegs, skip: Option<u64>, theirs: bool, entered: bool| {
        if in_place(nr) {
            let child = ChildPath::of(nr, &args, theirs);
            match gadget_or_plain(after, nr, reports_exit(nr), false, child) {
                Some((g, seen)) => {
                    let vfork_child = child == ChildPath::Vfork && seen;
                    vfork_call.set(vfork_child);
                    if vfork_child && reports_exit(nr) {
                        add_vfork_children(1);
                    }
                    regs.r11 = g;
                    if entered && seen {
                        mark_exec(nr, if nr == libc::SYS_execve as u64 { &mut regs.dx } else { &mut regs.r10 });
                    }
                }
                None => {
                    regs.ax = -(libc::ENOSYS as i64) as u64;
                    regs.r11 = after;
                }
            }
            return false;
        }
        if let Some(rc) = skip {
            regs.ax = rc;
            regs.cx = after;
            regs.r11 = after;
            return true;
        }
        let mut copy = [0u64; 4];
        let args = keep_sigsys_open(nr, args, &mut copy, theirs);
        // SAFETY: the application's own call and arguments, made with the selector at ALLOW;
        // not one that must run in place.
        regs.ax = if theirs { hook::making_application_call(|| unsafe { app_syscall(nr, args) }) } else { unsafe { raw_syscall(nr, args) } };
        regs.cx = after;
        regs.r11 = after;
        true
    };
    around_call(regs, call);
    // SAFETY: back to what the application had.
    unsafe { selector.write(was) };
    if vfork_call.get() {
        hook::note_vfork_parent();
    }
}

/// Makes a call (`call`: true when it ran here and has a result in `regs.ax`; given the result
/// the enter handlers asked for instead, it makes no call where it may skip it) between the
/// handlers' enter and exit, when this thread may run them; the call happens either way unless
/// a handler asked otherwise. `call`'s third argument says whether the call is the
/// application's (see `hook::making_application_call`), not one our own work made through a
/// rewritten site; its last, whether the enter handlers ran for it. Of `regs`, a call that
/// returns true changes only what the `syscall` instruction writes (`ax`, `cx`, `r11`).
///
/// A call that a signal handler interrupted, which the kernel would restart after it
/// (SA_RESTART), is restarted here instead (see [`take_over_restart`]): its exit handlers see
/// -ERESTARTSYS, then the enter handlers run again and the call is made again, as the kernel's
/// tracepoints show a restart.
fn around_call(regs: &mut PtRegs, mut call: impl FnMut(&mut PtRegs, Option<u64>, bool, bool) -> bool) {
    // What a call that was made (`call` true) changes of `regs`: the registers the `syscall`
    // instruction writes (a copy of the whole was a `memcpy` call on every traced call).
    let entered = (regs.ax, regs.cx, regs.r11);
    // Whether the call just made is to be made again (`interruption` as
    // `hook::take_interruption` gave it); `regs` is then as it was.
    let again = |regs: &mut PtRegs, interruption: Interruption| {
        let restart = regs.ax == ERESTARTSYS && matches!(interruption, Interruption::Restart { .. });
        if restart {
            (regs.ax, regs.cx, regs.r11) = entered;
        }
        restart
    };
    let again_now = |regs: &mut PtRegs| again(regs, hook::take_interruption());
    // With the call's registers (a rewritten site's stub frame, or the SIGSYS handler's copy):
    // a call above where a signal handler left by a jump frees the handler stack it held.
    match (hook::admit_at(regs), HANDLER.get()) {
        (Admission::Run(level, before), Some(h)) => {
            // A thread whose hits are all system calls has its handler stack released too.
            hook::register_handler_stack();
            loop {
                let skip = h.on_enter(regs, level);
                // The exit of `rt_sigreturn` cannot be seen after it (the thread goes on where
                // its signal found it): what the kernel's tracepoint shows, now.
                if regs.orig_ax == libc::SYS_rt_sigreturn as u64 {
                    if let Some(restored) = sigreturn_restores(regs.sp) {
                        h.on_exit(&restored, level);
                    }
                }
                // A signal handler that interrupts the call runs its exit handlers first, from
                // these registers (see `take_over_restart`; a handler's own calls have them set
                // aside by `hook::in_signal_handler`).
                hook::set_call_regs(regs as *const PtRegs as u64);
                let made = call(regs, skip, true, true);
                hook::set_call_regs(0);
                if !made {
                    break;
                }
                let interruption = hook::take_interruption();
                match interruption {
                    // Its exit handlers ran before the signal's handler, as the kernel's
                    // tracepoints show it.
                    Interruption::Restart { exit_reported: true } | Interruption::Interrupted { exit_reported: true } => {}
                    // A call a signal interrupted, not restarted: EINTR for the application,
                    // the code the call gave before the signal's delivery turned it into EINTR
                    // for the exit handlers, as the kernel's tracepoints show it.
                    Interruption::Interrupted { exit_reported: false } if regs.ax == EINTR => {
                        regs.ax = interrupted_result(regs.orig_ax, regs);
                        h.on_exit(regs, level);
                        regs.ax = EINTR;
                    }
                    _ => h.on_exit(regs, level),
                }
                if !again(regs, interruption) {
                    break;
                }
            }
            hook::leave(before);
        }
        // (No registers named for these calls: no entry programs ran. Named ones a handler
        // left by `siglongjmp` or a handler we did not wrap are not these.)
        (Admission::Miss, Some(h)) => {
            hook::set_call_regs(0);
            h.on_miss(regs.orig_ax);
            while call(regs, None, true, false) && again_now(regs) {}
        }
        (Admission::Run(_, before), None) => {
            hook::set_call_regs(0);
            hook::leave(before);
            while call(regs, None, true, false) && again_now(regs) {}
        }
        (Admission::Miss, None) => {
            hook::set_call_regs(0);
            while call(regs, None, true, false) && again_now(regs) {}
        }
        (Admission::Ignore, _) => {
            call(regs, None, false, false);
        }
    }
}

/// The kernel's -ERESTARTSYS as a call's result: what the system call tracepoints see of a call
/// that a signal interrupted and that restarts after its handler.
const ERESTARTSYS: u64 = -512i64 as u64;
/// -ERESTARTNOHAND: a call that restarts only where no handler runs (pause, select...).
const ERESTARTNOHAND: u64 = -514i64 as u64;
/// -ERESTART_RESTARTBLOCK: a call that would go on through `restart_syscall` (sleeps, poll,
/// futex waits with a timeout).
const ERESTART_RESTARTBLOCK: u64 = -516i64 as u64;
/// -EINTR as a call's result.
const EINTR: u64 = -(libc::EINTR as i64) as u64;

/// What the kernel's exit tracepoint shows of an `rt_sigreturn` made with the stack pointer at
/// `sp` (where the signal frame's `ucontext` is once the handler returned into the restorer):
/// the registers it restores, the call number -1 (the restored `orig_ax`), the result the
/// restored `rax`. None if the frame cannot be read.
fn sigreturn_restores(sp: u64) -> Option<PtRegs> {
    // `uc_mcontext` (the kernel's `sigcontext`, laid out as glibc's `gregs`) after `uc_flags`,
    // `uc_link` and `uc_stack`.
    const MCONTEXT_AT: u64 = 40;
    let mut bytes = [0u8; 23 * 8];
    if read_own(sp.checked_add(MCONTEXT_AT)?, &mut bytes) != bytes.len() {
        return None;
    }
    let g: [i64; 23] = std::array::from_fn(|i| i64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap()));
    Some(PtRegs { orig_ax: u64::MAX, ..PtRegs::from_gregs(&g) })
}

/// Whether the `rt_sigreturn` that ends the handler whose context is `ctx` goes through a call
/// site we rewrote (glibc's restorer `__restore_rt`: `mov rax, 15`, then the `syscall` 7 bytes
/// in, now a 2-byte `jmp`): its stub runs the call's programs whatever the selector, so the
/// wrapper must not run them too (before, each such return was seen twice).
fn sigreturn_site_rewritten(ctx: *mut libc::c_void) -> bool {
    // The signal frame: the restorer's address (`pretcode`), then the ucontext.
    let mut pretcode = [0u8; 8];
    if read_own((ctx as u64).wrapping_sub(8), &mut pretcode) != 8 {
        return false;
    }
    let mut code = [0u8; 9];
    if read_own(u64::from_ne_bytes(pretcode), &mut code) != code.len() {
        return false;
    }
    code[..7] == [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00] && code[7] == 0xeb
}

/// In the application's signal handler's wrapper, once the handler returned (`ctx` its
/// context, as it leaves it): where the handler interrupted a call we were making for the
/// application, its `rt_sigreturn` goes through with the selector at ALLOW, unseen by
/// interception, so its entry and exit programs run here, as the kernel's tracepoints show the
/// call: entry with number 15, exit with the registers it restores (see [`sigreturn_restores`]).
pub(crate) fn sigreturn_from_application_call(ctx: *mut libc::c_void, kernel_left: (i64, i64)) {
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.read() };
    // Where the `rt_sigreturn` will go through with the selector at ALLOW (the handler
    // interrupted code of ours, not busy: a call made for the application, signals deferred
    // until our work ended), interception does not see it.
    if ctx.is_null() || was != 0 || !ACTIVE.load(Ordering::Acquire) || !hook::dispatch_on() || sigreturn_site_rewritten(ctx) {
        return;
    }
    // A call set up to restart, which our code restarts instead (see `take_over_restart`): the
    // kernel restores it at its instruction with its number, as it left the context.
    report_sigreturn(ctx, hook::restart_noted().then_some(kernel_left));
}

/// Has the signal handler wrapper whose context is `ctx`, which deferred its signal (the
/// application's handler did not run), return through our restorer in the allowed range: its
/// `rt_sigreturn` is no call of the application's. Through glibc's restorer (its site rewritten,
/// or the call dispatched) it was taken for one where the thread was not busy: a signal that
/// waits for a stub to leave the handler stack. Nothing before interception has started.
pub(crate) fn return_unseen(ctx: *mut libc::c_void) {
    let restorer = ALLOWED.load(Ordering::Acquire);
    if restorer != 0 && !ctx.is_null() {
        // SAFETY: the kernel's signal frame for this delivery, on this thread's stack: the
        // return address the handler was entered with (`pretcode`), then the ucontext.
        unsafe { ((ctx as u64 - 8) as *mut u64).write(restorer as u64) };
    }
}

/// In an engine's handler (SIGTRAP, SIGSYS) that passed its signal to the application's handler
/// (`signals::forward`), once that returned (`ctx` its context as it leaves it): the engine's
/// handler returns through our restorer, unseen by interception, so the `rt_sigreturn` that
/// ends the application's handler is reported here, entry and exit, as the kernel's
/// tracepoints show it.
pub(crate) fn forwarded_handler_returned(ctx: *mut libc::c_void) {
    if ctx.is_null() || !ACTIVE.load(Ordering::Acquire) || !hook::dispatch_on() {
        return;
    }
    report_sigreturn(ctx, None);
}

/// Runs the entry and exit programs of the `rt_sigreturn` that ends the handler whose context
/// is `ctx`: entry with number 15, exit with the registers it restores (the result and address
/// `restart` gives where the call restarts at its instruction).
fn report_sigreturn(ctx: *mut libc::c_void, restart: Option<(i64, i64)>) {
    let Some(h) = HANDLER.get() else { return };
    // SAFETY: the kernel's ucontext for this delivery, as the handler left it.
    let g = unsafe { &(*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    let mut restored = PtRegs { orig_ax: u64::MAX, ..PtRegs::from_gregs(g) };
    if let Some((ax, ip)) = restart {
        (restored.ax, restored.ip) = (ax as u64, ip as u64);
    }
    let entry = PtRegs { orig_ax: libc::SYS_rt_sigreturn as u64, ax: libc::SYS_rt_sigreturn as u64, ..restored };
    // (The selector stays as it was: ALLOW, or the `rt_sigreturn` would be dispatched and seen
    // twice.)
    let ran = hook::run_in_signal_wrapper(|level| {
        let _ = h.on_enter(&entry, level);
        h.on_exit(&restored, level);
    });
    // Not run (a lock of ours held where the handler landed, or too deep): a miss, as a hit
    // that cannot run is.
    if !ran {
        h.on_miss(libc::SYS_rt_sigreturn as u64);
    }
}

/// What the kernel's tracepoints show as the result of call `nr` (its arguments in `regs`) that
/// a signal interrupted and whose handler ran, the call not restarted (the program gets EINTR):
/// the code the call gave before the delivery turned it into EINTR. As the kernel's calls give
/// them (checked against its tracepoints: `interrupted_calls_report_the_kernels_codes`, and
/// against the kernel's sources); a call not named here gives -ERESTARTSYS, as most blocking
/// calls do (reads, writes, waits, socket calls, locks). The number cannot tell everything: a
/// socket call with a receive or send timeout (SO_RCVTIMEO) and FUSE requests give EINTR.
fn interrupted_result(nr: u64, regs: &PtRegs) -> u64 {
    const TIMER_ABSTIME: u64 = 1;
    const SYS_IO_PGETEVENTS: i64 = 333;
    const SYS_FUTEX_WAIT: i64 = 454;
    const FUTEX_CMD: u64 = 127;
    match nr as i64 {
        // They give EINTR themselves.
        libc::SYS_epoll_wait
        | libc::SYS_epoll_pwait
        | libc::SYS_epoll_pwait2
        | libc::SYS_rt_sigtimedwait
        | libc::SYS_io_getevents
        | libc::SYS_semop
        | libc::SYS_semtimedop
        | libc::SYS_io_uring_enter => EINTR,
        libc::SYS_pause
        | libc::SYS_rt_sigsuspend
        | libc::SYS_select
        | libc::SYS_pselect6
        | libc::SYS_ppoll
        | libc::SYS_msgrcv
        | libc::SYS_msgsnd
        | SYS_IO_PGETEVENTS => ERESTARTNOHAND,
        libc::SYS_nanosleep | libc::SYS_poll => ERESTART_RESTARTBLOCK,
        // An absolute time does not go on through `restart_syscall`.
        libc::SYS_clock_nanosleep if regs.si & TIMER_ABSTIME != 0 => ERESTARTNOHAND,
        libc::SYS_clock_nanosleep => ERESTART_RESTARTBLOCK,
        // A wait with a timeout goes on through `restart_syscall`.
        libc::SYS_futex if matches!(regs.si & FUTEX_CMD, 0 | 9) && regs.r10 != 0 => ERESTART_RESTARTBLOCK,
        SYS_FUTEX_WAIT if regs.r8 != 0 => ERESTART_RESTARTBLOCK,
        _ => ERESTARTSYS,
    }
}

// The instruction that makes the application's own calls for it (`bpftime_app_syscall(nr,
// args)`, `args` six words): a signal handler that interrupts one knows it by its address.
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl bpftime_app_syscall",
    ".hidden bpftime_app_syscall",
    ".type bpftime_app_syscall, @function",
    "bpftime_app_syscall:",
    "mov rax, rdi",
    "mov rdi, [rsi]",
    "mov rdx, [rsi + 16]",
    "mov r10, [rsi + 24]",
    "mov r8, [rsi + 32]",
    "mov r9, [rsi + 40]",
    "mov rsi, [rsi + 8]",
    // rcx: 0 until the instruction has run (it leaves the address after it there).
    "xor ecx, ecx",
    ".globl bpftime_app_syscall_insn",
    ".hidden bpftime_app_syscall_insn",
    "bpftime_app_syscall_insn:",
    "syscall",
    "ret",
    ".size bpftime_app_syscall, . - bpftime_app_syscall",
);

unsafe extern "C" {
    fn bpftime_app_syscall(nr: u64, args: *const [u64; 6]) -> u64;
    static bpftime_app_syscall_insn: u8;
}

/// The routine above as bytes (position-independent), and its `syscall` instruction's offset.
fn app_call_routine() -> (&'static [u8], usize) {
    let start = bpftime_app_syscall as *const () as usize;
    let insn = std::ptr::addr_of!(bpftime_app_syscall_insn) as usize;
    // SAFETY: the routine's code, from its first byte through its `syscall` and `ret`.
    (unsafe { std::slice::from_raw_parts(start as *const u8, insn - start + 3) }, insn - start)
}

/// The routine that makes the application's calls (its copy in the allowed range once
/// [`start`] made it), and the address of its `syscall` instruction.
fn app_call() -> (unsafe extern "C" fn(u64, *const [u64; 6]) -> u64, u64) {
    let (_, insn) = app_call_routine();
    match ALLOWED.load(Ordering::Acquire) {
        0 => (bpftime_app_syscall, bpftime_app_syscall as *const () as u64 + insn as u64),
        base => {
            let at = base + APP_CALL_AT;
            // SAFETY: `start` copied the routine there before it published the range, which
            // stays mapped (read and execute) for the process's life.
            (unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(u64, *const [u64; 6]) -> u64>(at) }, (at + insn) as u64)
        }
    }
}

/// Makes the application's call `nr` for it (see [`take_over_restart`]).
///
/// # Safety
/// As [`raw_syscall`].
unsafe fn app_syscall(nr: u64, args: [u64; 6]) -> u64 {
    // SAFETY: the caller's contract; the routine above reads the six words and clobbers only
    // what a C call may (the `syscall` instruction: rcx and r11).
    unsafe { app_call().0(nr, &args) }
}

/// Called before the application's handler runs for a signal, with the signal's context: where
/// the signal interrupted the application's call that our code makes for it, after it entered
/// the kernel (`rcx` says so), and the kernel set that call up to restart after the handler
/// (SA_RESTART: the context is back at the `syscall` instruction with the call's number, not
/// `restart_syscall`'s), our code is made to restart it instead. The context
/// goes on after the instruction with -ERESTARTSYS as its result, which our code reports to
/// the exit handlers before it runs the enter handlers and makes the call again: a restart the
/// kernel made itself, inside our call, showed no exit and no second entry, where the kernel's
/// tracepoints show both.
pub(crate) fn take_over_restart(ctx: *mut libc::c_void) {
    // (A second signal delivered as the first handler returns finds the context as the first
    // left it: the interruption is noted already, and its exit reported.)
    if ctx.is_null() || !hook::in_application_call() || hook::interruption_noted() {
        return;
    }
    // SAFETY: the kernel's ucontext for this delivery, ours to change before the handler runs.
    let g = unsafe { &mut (*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    let insn = app_call().1;
    // The call entered the kernel (`rcx` as the instruction leaves it) and is to be made
    // again with its own number (not `restart_syscall`, which a first pass with no handler may
    // have set up: that one the kernel makes).
    let ran = g[libc::REG_RCX as usize] as u64 == insn + 2 && g[libc::REG_RAX as usize] != libc::SYS_restart_syscall;
    if g[libc::REG_RIP as usize] as u64 == insn && ran {
        g[libc::REG_RIP as usize] += 2;
        g[libc::REG_RAX as usize] = ERESTARTSYS as i64;
        hook::note_restart();
        exit_before_handler(|_| ERESTARTSYS);
    } else if g[libc::REG_RIP as usize] as u64 == insn + 2 && ran && g[libc::REG_RAX as usize] as u64 == EINTR {
        hook::note_interrupted();
        exit_before_handler(|regs| interrupted_result(regs.orig_ax, regs));
    }
}

/// Runs the exit handlers of the application's call that a signal interrupted, whose entry
/// handlers ran, before the signal's handler runs: the kernel's exit tracepoint fires as the
/// call leaves the kernel, before the delivery, so a tool that pairs each thread's entries and
/// exits (a latency, a file name kept from the entry) sees the call's exit before the
/// handler's own calls, not after. `result` gives the result the tracepoint shows. The call's
/// own code then reports no exit (see `around_call`).
fn exit_before_handler(result: impl FnOnce(&PtRegs) -> u64) {
    let (Some(at), Some(h)) = (hook::interrupted_call_regs(), HANDLER.get()) else { return };
    // SAFETY: `around_call` names the registers of the call this thread is making while the
    // call is made (0 otherwise, and in a signal handler's own calls), from the frame that
    // holds them, which outlives the call; the thread is inside that call's `syscall`
    // instruction (the signal found it there). The call's `&mut` to them is live in the
    // suspended frame, but nothing has written through it since the pointer was taken and
    // escaped (its writes come after the instruction returns), so this read sees them whole:
    // a foreign read of an unwritten `&mut`, as Tree Borrows allows (Stacked Borrows would not).
    let mut regs = unsafe { std::ptr::read_volatile(at as *const PtRegs) };
    regs.ax = result(&regs);
    if hook::run_in_signal_wrapper(|level| h.on_exit(&regs, level)) {
        hook::note_exit_reported();
    }
}

/// Turns dispatch on for the calling thread (after [`start`]).
pub fn enable() -> Result<(), std::io::Error> {
    let base = ALLOWED.load(Ordering::Acquire);
    if base == 0 {
        return Err(std::io::Error::other("system call interception is not started"));
    }
    // SAFETY: prctl(2) with the allowed range we mapped and this thread's selector byte, which
    // lives as long as the thread.
    let r = unsafe {
        own_call(libc::SYS_prctl, [PR_SET_SYSCALL_USER_DISPATCH as u64, PR_SYS_DISPATCH_ON, base as u64, ALLOWED_LEN as u64, hook::selector() as u64, 0])
    };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(-(r as i64) as i32));
    }
    hook::note_dispatch_on();
    Ok(())
}

/// The signal that asks a thread to turn dispatch on for itself.
pub(crate) fn enable_signal() -> libc::c_int {
    libc::SIGRTMAX() - 6
}

static ENABLE_ACKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn on_enable(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let _ = enable();
    // SIGSYS unblocked in the mask the thread returns to (a change made here would be undone
    // by the handler's return): see `unblock_sigsys`.
    if !context.is_null() {
        // SAFETY: the kernel passes an SA_SIGINFO handler its ucontext_t, writable.
        let uc = unsafe { &mut *(context as *mut libc::ucontext_t) };
        // SAFETY: a valid sigset_t in the context.
        unsafe { libc::sigdelset(&mut uc.uc_sigmask, libc::SIGSYS) };
        restart_blocked_call(&mut uc.uc_mcontext.gregs);
    }
    ENABLE_ACKS.fetch_add(1, Ordering::AcqRel);
}

/// Unblocks SIGSYS in this thread: a mask inherited across `execve` may block it, and a
/// dispatched call with SIGSYS blocked kills the process (the kernel delivers a blocked forced
/// signal with its default action). From then on the agent's mask wrappers keep it unblocked.
fn unblock_sigsys() {
    let bit: u64 = SIGSYS_BIT;
    // SAFETY: rt_sigprocmask(2) SIG_UNBLOCK with a valid 8-byte set.
    unsafe { own_call(libc::SYS_rt_sigprocmask, [libc::SIG_UNBLOCK as u64, &bit as *const u64 as u64, 0, 8, 0, 0]) };
}

/// Installs the SIGSYS action again (a child made with clone3's `CLONE_CLEAR_SIGHAND` has it
/// reset), as [`start`] installed it.
fn reinstall_sigsys() {
    let act: [u64; 4] = std::array::from_fn(|i| VFORK_CHILD.act[i].load(Ordering::Acquire));
    if act[0] != 0 {
        // SAFETY: rt_sigaction(2) with the kernel's struct sigaction as `start` filled it.
        unsafe { own_call(libc::SYS_rt_sigaction, [libc::SIGSYS as u64, act.as_ptr() as u64, 0, 8, 0, 0]) };
    }
}

/// Makes system call `nr` as the agent's own: from our code with the selector at ALLOW, never
/// through a call site of libc's, which may be rewritten (its stub would take the call for the
/// application's where the thread is not busy).
///
/// # Safety
/// As [`raw_syscall`].
pub(crate) unsafe fn own_call(nr: libc::c_long, args: [u64; 6]) -> u64 {
    let selector = hook::selector();
    // SAFETY: this thread's selector byte.
    let was = unsafe { selector.replace(0) };
    // SAFETY: the caller's contract.
    let r = unsafe { raw_syscall(nr as u64, args) };
    // SAFETY: back to what the thread had.
    unsafe { selector.write(was) };
    r
}

/// Whether the process runs under Valgrind: its client request `RUNNING_ON_VALGRIND` (0x1001),
/// rotations of rdi that leave it as it was and an `xchg rbx, rbx`, which natively do nothing
/// (rdx keeps its 0) and under Valgrind answer the request in rdx.
fn under_valgrind() -> bool {
    let request: [u64; 6] = [0x1001, 0, 0, 0, 0, 0];
    let answer: u64;
    // SAFETY: the sequence changes no register natively (the four rotations of rdi add up to
    // 128 bits, and it is marked clobbered anyway); Valgrind reads the six words at rax.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") request.as_ptr(),
            inout("rdx") 0u64 => answer,
            out("rdi") _,
            options(nostack),
        );
    }
    answer != 0
}

/// Turns dispatch on in every other thread of the process too (threads that existed before
/// [`start`]: each is sent a signal whose handler turns it on for itself). Waits up to a second
/// for them to answer.
pub fn enable_everywhere() {
    // On the thread's signal stack where it has one (a goroutine's stack has no room for the
    // kernel's signal frame).
    install_engine_handler(enable_signal(), on_enable as *const () as usize, libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK);
    // Whether every handler the application has is counted (see `restart_blocked_call`).
    HANDLERS_COUNTED.store(application_handlers_counted(), Ordering::Release);
    ROUND_SIGNALS.store(crate::signals::APP_SIGNALS.load(Ordering::Acquire), Ordering::Release);
    let recorded = std::sync::atomic::AtomicUsize::new(0);
    crate::patch::signal_other_threads(enable_signal(), &ENABLE_ACKS, |tid| {
        // Where it waits in a call: what the call is, to make it again (see `on_enable`).
        let at = recorded.load(Ordering::Relaxed);
        if let (Some(slot), Some(call)) = (BLOCKED.get(at), blocked_call(tid)) {
            slot.record(tid, call);
            recorded.store(at + 1, Ordering::Relaxed);
        }
        true
    });
    for slot in &BLOCKED[..recorded.load(Ordering::Relaxed)] {
        slot.tid.store(0, Ordering::Release);
    }
}

/// A thread found waiting in a system call as [`enable_everywhere`] signals it: its id, the
/// call's number, the address after its `syscall` instruction and its six arguments (as
/// /proc/self/task/TID/syscall gives them); tid 0: a free slot.
struct BlockedCall {
    tid: std::sync::atomic::AtomicI32,
    words: [AtomicU64; 8],
}

impl BlockedCall {
    /// A free slot.
    const fn free() -> Self {
        BlockedCall { tid: std::sync::atomic::AtomicI32::new(0), words: [const { AtomicU64::new(0) }; 8] }
    }

    fn record(&self, tid: i32, call: [u64; 8]) {
        for (word, value) in self.words.iter().zip(call) {
            word.store(value, Ordering::Relaxed);
        }
        self.tid.store(tid, Ordering::Release);
    }
}

/// The application's signal deliveries counted as [`enable_everywhere`] began its round (see
/// `signals::APP_SIGNALS`).
static ROUND_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Whether, as [`enable_everywhere`] began its round, every handler installed was the wrapper
/// (whose deliveries `signals::APP_SIGNALS` counts) or the engine's: not in a process the agent
/// was injected into whose handlers came before it, nor with handlers installed by the raw
/// call. Otherwise no wait is made again (an uncounted handler may have ended it).
static HANDLERS_COUNTED: AtomicBool = AtomicBool::new(false);

/// The signals a fault or a trap of the thread itself raises (a mask of bit `sig - 1`): never
/// blocked in the engine's handlers.
const SYNCHRONOUS_SIGNALS: u64 = SIGSYS_BIT
    | SIGTRAP_BIT
    | 1 << (libc::SIGSEGV - 1)
    | 1 << (libc::SIGBUS - 1)
    | 1 << (libc::SIGILL - 1)
    | 1 << (libc::SIGFPE - 1)
    | 1 << (libc::SIGABRT - 1);

/// Whether every signal's handler is the wrapper of `signals` or one of the engine's; but for
/// the signals a thread's own fault or trap raises (they end no wait), and glibc's two internal
/// ones (32, cancellation, which ends the thread; 33, `setxid`, whose EINTR no program asks
/// for), whose handlers glibc installs itself.
fn application_handlers_counted() -> bool {
    (1..=64u64).filter(|&sig| SYNCHRONOUS_SIGNALS & 1 << (sig - 1) == 0 && sig != 32 && sig != 33).all(|sig| {
        let Some(act) = installed_handler(sig) else { return true };
        let engine = [on_sigsys as *const () as usize, on_enable as *const () as usize];
        engine.contains(&act.handler) || crate::signals::is_wrapper(act.handler) || crate::patch::is_engine_handler(act.handler)
    })
}

/// The kernel's action for signal `sig` where it is a handler (not SIG_DFL or SIG_IGN), read
/// with our own call.
fn installed_handler(sig: u64) -> Option<KernelSigaction> {
    let mut act = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
    // SAFETY: rt_sigaction(2) reading the action into the kernel's struct sigaction layout.
    let r = unsafe { own_call(libc::SYS_rt_sigaction, [sig, 0, &mut act as *mut KernelSigaction as u64, 8, 0, 0]) };
    (r == 0 && act.handler != libc::SIG_DFL && act.handler != libc::SIG_IGN).then_some(act)
}

/// The threads [`enable_everywhere`] found waiting in a call (more: their calls end with EINTR,
/// as any signal's handler makes them).
static BLOCKED: [BlockedCall; 64] = [const { BlockedCall::free() }; 64];

/// The call thread `tid` waits in (number, address after the instruction, six arguments), from
/// /proc/self/task/TID/syscall (proc(5)); None where it runs or cannot be read.
fn blocked_call(tid: i32) -> Option<[u64; 8]> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), if f.starts_with("0x") { 16 } else { 10 }).ok())
        .collect::<Option<_>>()?;
    // nr, six arguments, stack pointer, instruction pointer.
    let [nr, a0, a1, a2, a3, a4, a5, _sp, pc] = fields[..] else { return None };
    Some([nr, pc, a0, a1, a2, a3, a4, a5])
}

/// In [`on_enable`], with the context `g` its signal interrupted: where that was a wait this
/// thread was in (found by [`enable_everywhere`]) that the signal ended with EINTR, the context
/// goes back to make the call again, as if no signal had come (the kernel's tracepoints,
/// attached, never interrupt a call). Only waits that, made again, wait as before
/// ([`waits_again`]), and only where no signal of the application's was delivered since the
/// round began (its handler may have been what ended the call, with an EINTR the program
/// wants). The call made again is intercepted like any.
fn restart_blocked_call(g: &mut [libc::greg_t; 23]) {
    // SAFETY: gettid(2), by our own instruction (a libc call here would be dispatched).
    let me = unsafe { own_call(libc::SYS_gettid, [0; 6]) } as i32;
    let regs = [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX, libc::REG_R10, libc::REG_R8, libc::REG_R9];
    let w: [u64; 8] = match BLOCKED.iter().find(|s| s.tid.load(Ordering::Acquire) == me) {
        Some(slot) => std::array::from_fn(|i| slot.words[i].load(Ordering::Relaxed)),
        // Not found waiting: it was running (or waiting for a CPU) when looked at, and may have
        // started a wait before the signal came. The call's number, where the code before the
        // `syscall` instruction sets it as libc's wrappers do (`mov $NR, %eax`); its arguments
        // are still in their registers (a call changes only rax, rcx and r11).
        // (Not where a handler of the application's ended a call there: its EINTR may be
        // wanted, and the handler may have run before the round began.)
        None => {
            let pc = g[libc::REG_RIP as usize] as u64;
            if crate::signals::application_ended_call_at(pc) {
                return;
            }
            let Some(nr) = number_set_before(pc) else { return };
            let mut w = [nr, pc, 0, 0, 0, 0, 0, 0];
            for (i, &r) in regs.iter().enumerate() {
                w[2 + i] = g[r as usize] as u64;
            }
            w
        }
    };
    let (nr, pc, args) = (w[0], w[1], &w[2..]);
    let same_call =
        g[libc::REG_RIP as usize] as u64 == pc && g[libc::REG_RAX as usize] as u64 == EINTR && regs.iter().zip(args).all(|(&r, &a)| g[r as usize] as u64 == a);
    let quiet = HANDLERS_COUNTED.load(Ordering::Acquire) && crate::signals::APP_SIGNALS.load(Ordering::Acquire) == ROUND_SIGNALS.load(Ordering::Acquire);
    let mut insn = [0u8; 2];
    if !same_call || !quiet || !waits_again(nr, args) || read_own_as_ours(pc.wrapping_sub(2), &mut insn) != 2 || insn != [0x0f, 0x05] {
        return;
    }
    g[libc::REG_RIP as usize] = (pc - 2) as i64;
    g[libc::REG_RAX as usize] = nr as i64;
}

/// The system call number the instruction right before the `syscall` ending at `pc` sets:
/// `mov $NR, %eax` (`b8` and a 32-bit immediate, with no prefix that names another register),
/// as libc's wrappers set it; `None` for any other code.
fn number_set_before(pc: u64) -> Option<u64> {
    let mut code = [0u8; 8];
    if read_own_as_ours(pc.wrapping_sub(8), &mut code) != 8 || code[6..] != [0x0f, 0x05] || code[1] != 0xb8 || (0x40..=0x4f).contains(&code[0]) {
        return None;
    }
    Some(u32::from_le_bytes([code[2], code[3], code[4], code[5]]) as u64)
}

/// Whether call `nr` with arguments `args`, ended by a signal's handler with EINTR, waits as
/// before when made again: waits for events or signals with no timeout or one the kernel
/// updates (`select`, `pselect6`, `ppoll`) or an absolute one (`clock_nanosleep` with
/// TIMER_ABSTIME), or a relative one that starts over (`poll`, `epoll_wait`, `epoll_pwait`,
/// `epoll_pwait2`, futex waits, `rt_sigtimedwait`). Not relative sleeps (`nanosleep`, a relative
/// `clock_nanosleep`: EINTR gives the caller the time left, which sleep loops go on with), nor
/// calls that did something before they were ended (`close` frees its descriptor first).
fn waits_again(nr: u64, args: &[u64]) -> bool {
    const TIMER_ABSTIME: u64 = 1;
    const FUTEX_WAIT: u64 = 0;
    const FUTEX_WAIT_BITSET: u64 = 9;
    match nr as libc::c_long {
        libc::SYS_poll
        | libc::SYS_ppoll
        | libc::SYS_select
        | libc::SYS_pselect6
        | libc::SYS_epoll_wait
        | libc::SYS_epoll_pwait
        | libc::SYS_epoll_pwait2
        | libc::SYS_pause
        | libc::SYS_rt_sigsuspend
        | libc::SYS_rt_sigtimedwait => true,
        // The command, without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME.
        libc::SYS_futex => matches!(args[1] & 0x7f, FUTEX_WAIT | FUTEX_WAIT_BITSET),
        libc::SYS_clock_nanosleep => args[1] & TIMER_ABSTIME != 0,
        _ => false,
    }
}

/// The kernel's `struct sigaction` on x86-64 (rt_sigaction(2)).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// `SA_RESTORER`: `restorer` is the code the handler returns to (it makes `rt_sigreturn`).
const SA_RESTORER: u64 = 0x0400_0000;

/// Installs `handler` (with `flags`, nothing blocked) for the engine's own signal `sig`
/// (SIGTRAP, a fix-up round, turning interception on), returning through our restorer in the
/// allowed range once interception has started: through libc's, its `rt_sigreturn` would be
/// dispatched (or go through its rewritten site) and be taken for the application's, a call
/// the kernel never sees. Before that, libc's restorer does.
pub(crate) fn install_engine_handler(sig: libc::c_int, handler: usize, flags: libc::c_int) {
    let restorer = ALLOWED.load(Ordering::Acquire);
    if restorer == 0 {
        // SAFETY: a zeroed sigaction is valid; we fill the handler and flags (sigaction(2)).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            act.sa_flags = flags;
            libc::sigemptyset(&mut act.sa_mask);
            crate::signals::real_sigaction()(sig, &act, std::ptr::null_mut());
        }
        return;
    }
    // The enable signal's handler blocks the signals that come from outside: one landing there
    // would find a wait it ended about to be made again (see `restart_blocked_call`); kept
    // pending, it is delivered as the wait starts again (with the wait's own mask, for
    // `ppoll`, `pselect6`, `rt_sigsuspend`) or before, and ends it as it would have.
    let mask = if sig == enable_signal() { !SYNCHRONOUS_SIGNALS } else { 0 };
    let act = KernelSigaction { handler, flags: flags as u64 | SA_RESTORER, restorer, mask };
    // SAFETY: rt_sigaction(2) with the kernel's struct sigaction layout on x86-64 and an 8-byte
    // mask; the restorer (the allowed range's first instructions) makes `rt_sigreturn`.
    unsafe { own_call(libc::SYS_rt_sigaction, [sig as u64, &act as *const KernelSigaction as u64, 0, 8, 0, 0]) };
}

/// Takes SIGSYS (and SIGTRAP, as the wrapper does) out of the masks of the signal handlers
/// installed before interception started
/// (behind no wrapper of ours: an injected agent's process, or raw `rt_sigaction`): a handler
/// that blocks it while it runs (Go's block every signal) makes dispatched calls there, its
/// own and its return's `rt_sigreturn` through glibc's restorer, and a dispatched call that
/// finds SIGSYS blocked kills the process. Each action is kept otherwise as it is.
fn open_sigsys_in_handlers() {
    for sig in 1..=64u64 {
        if [libc::SIGKILL, libc::SIGSTOP, libc::SIGSYS].contains(&(sig as libc::c_int)) {
            continue;
        }
        let Some(mut act) = installed_handler(sig).filter(|a| a.mask & (SIGSYS_BIT | SIGTRAP_BIT) != 0) else { continue };
        act.mask &= !(SIGSYS_BIT | SIGTRAP_BIT);
        // SAFETY: rt_sigaction(2) writing back the action just read, SIGSYS out of its mask.
        unsafe { own_call(libc::SYS_rt_sigaction, [sig, &act as *const KernelSigaction as u64, 0, 8, 0, 0]) };
    }
}

/// Turns dispatch off for the calling thread.
pub fn disable() {
    // SAFETY: prctl(2) PR_SYS_DISPATCH_OFF takes no pointers.
    unsafe { own_call(libc::SYS_prctl, [PR_SET_SYSCALL_USER_DISPATCH as u64, 0, 0, 0, 0, 0]) };
}

/// Starts intercepting the system calls of this process with `handler`: maps the allowed
/// range, installs the SIGSYS handler and turns dispatch on for the calling thread.
pub fn start(handler: Arc<dyn SyscallHandler>) -> Result<(), String> {
    if under_valgrind() {
        return Err("Valgrind makes the program's system calls from code of its own, which Syscall User Dispatch would stop".into());
    }
    if HANDLER.set(handler).is_err() {
        return Err("system call interception is already started".into());
    }
    // SAFETY: a fresh anonymous mapping (mmap(2)).
    let page = unsafe { libc::mmap(std::ptr::null_mut(), ALLOWED_LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if page == libc::MAP_FAILED {
        return Err(format!("mapping the allowed range: {}", std::io::Error::last_os_error()));
    }
    // The restorer: rt_sigreturn, encoded as glibc's `__restore_rt` is (`mov rax, 15; syscall`),
    // which unwinders (libgcc's, gdb's, libunwind's) know for a signal frame's return: a
    // backtrace from a handler that returns through it goes on into the interrupted code.
    let restorer = [0x48, 0xc7, 0xc0, 15, 0, 0, 0, 0x0f, 0x05];
    let (routine, _) = app_call_routine();
    assert!(restorer.len() <= APP_CALL_AT && APP_CALL_AT + routine.len() <= FIRST_GADGET);
    // SAFETY: the fresh mapping is ALLOWED_LEN bytes, read-write; both fit before the first
    // gadget (checked).
    unsafe {
        std::ptr::copy_nonoverlapping(restorer.as_ptr(), page as *mut u8, restorer.len());
        std::ptr::copy_nonoverlapping(routine.as_ptr(), (page as *mut u8).add(APP_CALL_AT), routine.len());
    }
    // SAFETY: our mapping (mprotect(2)).
    if unsafe { libc::mprotect(page, ALLOWED_LEN, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        return Err(format!("protecting the allowed range: {}", std::io::Error::last_os_error()));
    }
    ALLOWED.store(page as usize, Ordering::Release);
    // What threads need to have handler stacks, before any stub is made.
    hook::handler_stacks();
    // libc's sigaction looked up now, by this thread: a thread that first needs it in a SIGSYS
    // (its first call at a site installs the fix-up handler) would wait in `dlsym` for the
    // loader's lock, which a `dlopen` of the agent (`bpftime attach`) holds while its start
    // waits for that thread's patching lock.
    let _ = crate::signals::real_sigaction();
    // The engine's own signals return through our restorer from now on (see
    // `install_engine_handler`).
    crate::patch::engine_handlers_to_own_restorer();
    crate::sampling::handler_to_own_restorer();
    // rt_sigaction(2) directly, to give our own restorer (libc would give its own, outside the
    // allowed range: its rt_sigreturn would be dispatched too). NODEFER: an application signal
    // handler nested in ours returns through a SIGSYS of its own.
    let act = KernelSigaction {
        handler: on_sigsys as *const () as usize,
        // On the thread's signal stack where it has one (a goroutine's stack has no room for
        // the kernel's signal frame).
        flags: (libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK) as u64 | SA_RESTORER,
        restorer: page as usize,
        mask: SIGSYS_HANDLER_MASK,
    };
    let mut old = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
    // SAFETY: the kernel's struct sigaction layout on x86-64, valid pointers, 8-byte mask.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, libc::SIGSYS, &act as *const KernelSigaction, &mut old as *mut KernelSigaction, 8) };
    if r != 0 {
        return Err(format!("installing the SIGSYS handler: {}", std::io::Error::last_os_error()));
    }
    crate::signals::own_signal(libc::SIGSYS, old.handler, old.flags as libc::c_int);
    // What a vfork child installs again and turns on for itself (see `bpftime_vfork_child`).
    for (slot, word) in VFORK_CHILD.act.iter().zip([act.handler as u64, act.flags, act.restorer as u64, act.mask]) {
        slot.store(word, Ordering::Release);
    }
    let fs_base: u64;
    // SAFETY: reads the thread pointer, which `%fs:0` holds (x86-64 psABI).
    unsafe { std::arch::asm!("mov {b}, qword ptr fs:[0]", b = out(reg) fs_base, options(nostack, readonly)) };
    VFORK_CHILD.selector_offset.store((hook::selector() as u64).wrapping_sub(fs_base), Ordering::Release);
    unblock_sigsys();
    enable().map_err(|e| format!("Syscall User Dispatch (Linux 5.11+): {e}"))?;
    // A child made by fork(2) starts without dispatch: its forking thread turns it on again
    // (the child of the application's fork had it on, recording).
    // The forking thread notes that glibc's `fork` runs its handlers (see `ForkChild`).
    extern "C" fn before_fork() {
        hook::set_forking(true);
    }
    extern "C" fn after_fork_in_parent() {
        hook::set_forking(false);
    }
    extern "C" fn after_fork_in_child() {
        after_fork();
    }
    // SAFETY: registers fork handlers that set a thread-local byte (and `after_fork`), none
    // unwinding (pthread_atfork(3)).
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
    ACTIVE.store(true, Ordering::Release);
    // (After: from now on the handlers installed through the wrapper or intercepted calls have
    // it taken out of their masks as they are installed.)
    open_sigsys_in_handlers();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::number_set_before;

    /// The number libc's wrappers set right before `syscall` is read back; code that sets
    /// another register (a REX prefix) or something else is not taken for it.
    #[test]
    fn the_number_set_before_a_syscall_instruction() {
        static POLL: [u8; 9] = [0x90, 0x90, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x0f, 0x05];
        static R8D: [u8; 9] = [0x90, 0x41, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x0f, 0x05];
        static OTHER: [u8; 9] = [0x90, 0x48, 0x89, 0xf8, 0x90, 0x90, 0x90, 0x0f, 0x05];
        let end = |code: &'static [u8; 9]| code.as_ptr() as u64 + 9;
        assert_eq!(number_set_before(end(&POLL)), Some(7));
        assert_eq!(number_set_before(end(&R8D)), None);
        assert_eq!(number_set_before(end(&OTHER)), None);
    }
}
