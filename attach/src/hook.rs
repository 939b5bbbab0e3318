//! The inline-hook engine.
//!
//! A *site* is a patched address. Its first 5 bytes become `jmp rel32` to a per-site *entry
//! stub*, placed within +-2 GiB, that stores every general register into a kernel-layout
//! [`PtRegs`] on the stack (below the red zone when the site is mid-function), saves the vector
//! state that may be live there (see `PointKind`), calls [`entry_dispatch`], reloads what the
//! call may have changed and jumps to the *trampoline*: the instructions the jump overwrote,
//! relocated by iced-x86 (RIP-relative operands and branches fixed), then a jump back after
//! them.
//!
//! Return probes patch the function's `ret`s where its whole body can be decoded (no indirect
//! jumps, no tail calls, room for a jump at every `ret`): a jump over the instructions ending
//! with each `ret` leads to a stub that runs them, calls [`return_site_dispatch`] and returns.
//! Elsewhere they replace the return address at function entry with the global *return stub*
//! and remember the real one on a per-thread shadow stack; the return stub saves registers
//! (the return value is `ax`), calls [`return_dispatch`], and jumps to the real address.
//!
//! Handlers are lists swapped atomically (old lists are leaked, never freed, so a thread still
//! walking one is safe). A per-thread flag keeps probes from firing inside probe handlers.

use crate::module_code::{self, ModuleCode, VectorUse};
use crate::patch::{self, PATCH_LOCK};
use crate::regs::PtRegs;
use iced_x86::code_asm::*;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionBlock, MemoryOperand, Mnemonic, Register,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::mem::offset_of;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Length of the jump written over a site.
const PATCH_LEN: usize = 5;
const PAGE: usize = 4096;
/// Offset of the trampoline in a site's page.
const TRAMPOLINE_AT: u64 = 2048;

/// Called when a probe fires.
pub trait ProbeHandler: Send + Sync {
    /// The probed thread's registers (at entry: arguments; at return: `ax` is the result).
    /// `level` is 0 for a hit in the thread's normal flow and n for a hit in a signal handler
    /// that interrupted n running handlers (below [`NEST_LEVELS`]): state a handler keeps per
    /// thread must be kept per level, as the kernel keeps per-CPU state per nesting level.
    ///
    /// Returning `Some(rc)` asks for the function to return `rc` at once without running
    /// (`bpf_override_return`); honoured at a function's entry, ignored elsewhere.
    fn on_hit(&self, regs: &PtRegs, level: usize) -> Option<u64>;
    /// A hit that could not run: nesting deeper than [`NEST_LEVELS`], a signal that landed
    /// in the agent's own work, a return whose entry could not be recorded (the kernel's
    /// `recursion_misses`).
    fn on_miss(&self) {}
}

/// How many handlers may run at once on one thread: the normal flow plus signal handlers
/// nested in it. Deeper hits are misses.
pub const NEST_LEVELS: usize = 4;

/// Entry probe (uprobe) or return probe (uretprobe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Entry,
    Return,
}

/// Why a probe could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot patch {addr:#x}: {reason}")]
    Unpatchable { addr: u64, reason: String },
    #[error("uretprobes need the function's first byte, {addr:#x} is not one")]
    ReturnNotAtEntry { addr: u64 },
    #[error("no memory within 2 GiB of {0:#x} for the probe's stub")]
    NoNearMemory(u64),
    #[error("too many probe sites")]
    TooManySites,
    #[error("writing code at {addr:#x}: {source}")]
    Io { addr: u64, source: std::io::Error },
    #[error("no probe {0}")]
    NoSuchProbe(u64),
}

/// Identifies an attached handler, for [`detach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeId(u64);

type HandlerList = Vec<(ProbeId, Arc<dyn ProbeHandler>)>;

/// A patched address. Leaked: stubs and trampolines must outlive every thread that may be in
/// them, and a site may be patched again later.
pub struct Site {
    addr: u64,
    at_entry: bool,
    /// How the site is patched.
    method: Method,
    original: [u8; PATCH_LEN],
    /// The bytes written over the site (the first `method.len()`).
    jump: [u8; PATCH_LEN],
    slot: usize,
    entry: AtomicPtr<HandlerList>,
    ret: AtomicPtr<HandlerList>,
    /// What is written over the site now (see [`Installed`]).
    installed: AtomicU8,
    /// Where the trampoline runs the function's `ret` itself (see [`trampoline_ret`]): the
    /// original `ret`'s address and that of the 5-byte nop before the trampoline's copy, which
    /// becomes the jump of the return site there.
    trampoline_ret: Option<(u64, u64)>,
    /// A jump from the site straight to its trampoline: installed when only return probes
    /// need the function to run its trampoline.
    to_trampoline: [u8; PATCH_LEN],
    /// A function entry's return sites, patched to run its return probes (decided at its first
    /// return probe; empty: the function's body cannot be patched at its returns, and return
    /// probes replace the return address at entry instead).
    returns: OnceLock<Vec<&'static ReturnSite>>,
    /// What its body needs kept (at a function's entry; else [`BodyNeeds::UNKNOWN`]).
    needs: BodyNeeds,
    /// Its module's code, if it could be read (see `module_code`).
    module: Option<ModuleCode>,
    /// The vector registers named by its function and the module's functions reaching it
    /// (`ModuleCode::vectors_at`; [`VectorUse::ALL`] if unknown).
    named: VectorUse,
    /// Its function returns twice (see [`SiteInfo::returns_twice`]).
    returns_twice: bool,
    /// What the verbose output says of how the site is patched: why no jump fits
    /// ([`Method::Trap`]), or what its jump lacks; empty otherwise.
    remark: String,
    /// Length of the first instruction the patch covers: where the kernel resumes a thread
    /// after a kernel uprobe placed over our jump ran that instruction (see `landing`).
    first_len: u8,
    /// A breakpoint that is not ours (a kernel uprobe) was written over the patch, and the
    /// site gave the function its bytes back: it stays unpatched (see
    /// [`yield_to_foreign_breakpoints`]).
    yielded: AtomicBool,
    /// The file mapped at the site when it was made (see [`mapped_at`]): another there now
    /// means the site's code is gone.
    mapped_from: Option<MappedFrom>,
}

/// The file a mapping holds and where in it an address lies: (device, inode, file offset).
type MappedFrom = (String, u64, u64);

/// What file is mapped at `addr` and at which offset (None: unmapped, or anonymous memory).
fn mapped_at(maps: &[crate::procmaps::Mapping], addr: u64) -> Option<MappedFrom> {
    let m = maps.iter().find(|m| m.start <= addr && addr < m.end && m.inode != 0)?;
    Some((m.dev.clone(), m.inode, addr - m.start + m.offset))
}

/// What is written over a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Installed {
    /// Its own bytes.
    Original = 0,
    /// The jump to its stub (or the `int3`).
    Stub = 1,
    /// A jump to its trampoline, whose `ret` runs the return probes.
    Trampoline = 2,
}

/// A `ret` of a probed function, patched: a 5-byte jump over the instructions that end with
/// it (or into the padding after it) to a stub that runs them, then the function's return
/// probes, then the `ret`. No return address is replaced, so the CPU's return predictor stays
/// right.
pub struct ReturnSite {
    addr: u64,
    original: [u8; PATCH_LEN],
    jump: [u8; PATCH_LEN],
    slot: usize,
    installed: AtomicBool,
}

/// How a site sends threads to its handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A 5-byte jump to the site's stub (nanoseconds).
    Jump,
    /// A 5-byte jump spilling into the alignment padding after a function shorter than it.
    JumpIntoPadding,
    /// An `int3`, where no jump fits: the SIGTRAP handler runs the handlers and resumes
    /// through the relocated instruction (microseconds, like a kernel uprobe).
    Trap,
}

impl Method {
    /// Bytes written over the code.
    fn len(self) -> usize {
        if self == Method::Trap {
            1
        } else {
            PATCH_LEN
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Jump => "a jump",
            Method::JumpIntoPadding => "a jump into the padding after it",
            Method::Trap => "an int3 trap",
        })
    }
}

fn empty_list() -> *mut HandlerList {
    Box::leak(Box::new(Vec::new()))
}

fn list(p: &AtomicPtr<HandlerList>) -> &'static HandlerList {
    // SAFETY: lists are leaked boxes, never freed, only replaced.
    unsafe { &*p.load(Ordering::Acquire) }
}

/// What a thread is doing, as far as probes are concerned.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct ThreadState {
    /// The current flow (the thread's own, or a signal handler's) is running our code: a hit
    /// here is a call made by a handler or by the agent, which programs must not see.
    busy: bool,
    /// The agent's own work is in progress somewhere on this thread (maybe interrupted by a
    /// signal): what it holds (allocator, patch locks) must not be needed by a hit.
    agent: bool,
    /// Handlers running on this thread, in all its flows together.
    depth: u8,
    /// The thread's first hit has run (with signals deferred: handlers set up per-thread
    /// state then, which a nested flow must not find half made).
    warm: bool,
}

/// What the hook engine keeps per thread, in one thread-local, laid out as the assembly
/// below gives its initial bytes (all zero but the selector and `dispatch_off`).
#[repr(C)]
struct HookThread {
    state: Cell<ThreadState>,
    /// 1 from a stub's mark (see [`emit_probe_call`]) until its hit is admitted or turned away:
    /// a signal that lands meanwhile waits for the hit's programs, as the kernel's signals wait
    /// for a uprobe's once its int3 ran (see [`entering_at`]).
    entering: Cell<u8>,
    /// Return addresses taken by return probes (made at the thread's first one).
    shadow: Cell<*mut ShadowStack>,
    /// The thread's Syscall User Dispatch selector (see `syscalls`): ALLOW (0) while it runs
    /// our code (`busy`), BLOCK (1) otherwise. The kernel reads it only on threads where
    /// dispatch is on.
    selector: Cell<u8>,
    /// Something runs on the handler stack (set and put back by whoever runs there, around
    /// all it does there), or a signal handler runs: a hit meanwhile stays where it is. Only
    /// ever 0 or 1: the stubs address [`HookThread::in_use_sink`] with it.
    stack_in_use: Cell<u8>,
    /// The handler stack is registered for release at the thread's exit.
    stack_registered: Cell<u8>,
    /// The thread is making the application's own system call for it (intercepted): busy as
    /// it is, the application's signals are not deferred, they interrupt the call as ever.
    app_call: Cell<u8>,
    /// How a signal interrupted the application's call the thread is making for it (see
    /// [`Interruption`]): set up by the kernel to restart after the handler, which our code
    /// does instead (1), or not restarted (2); 4 added once its exit handlers have run (see
    /// `syscalls::take_over_restart`).
    interruption: Cell<u8>,
    /// Where a stub that found the handler stack in use writes the in-use byte it found (1),
    /// leaving the real one to its user: `stack_in_use + 4 * found`, an address the stub forms
    /// without touching the flags (see [`emit_probe_call`]'s way out).
    in_use_sink: Cell<u8>,
    /// 1 until system call interception is turned on for the thread (`syscalls::enable`): its
    /// calls through a rewritten call site are not the application's to see (a thread the
    /// agent made, as glibc starts it).
    dispatch_off: Cell<u8>,
    /// glibc's `fork` is running its handlers on this thread (from the prepare handler on; a
    /// child made then has it set: see `syscalls::ForkChild`).
    forking: Cell<u8>,
    /// The top of the thread's handler stack (0 until its first hit maps it, then
    /// [`NO_HANDLER_STACK`] once it has none): the stubs run the handlers there, not on the
    /// application's stack, which may be a goroutine's few kilobytes (see
    /// [`emit_handler_stack_switch`]).
    stack_top: Cell<u64>,
    /// The thread's signal stack as `sigaltstack(2)` gave it when the handler stack was mapped
    /// (`stack_t`: base, flags, size; all zero for none): a hit on it stays there, as the
    /// kernel takes a signal stack that `rsp` has left for free and would deliver the next
    /// signal over the live frames of a handler it does not know ran there (an agent loaded
    /// into a running process wraps none of its handlers: see [`in_signal_handler`]).
    alt_stack: Cell<[u64; 3]>,
    /// Signals (bit `n - 1` for signal `n`) queued again and blocked because they came while
    /// the thread was busy (see `signals::defer`): unblocked when the thread's work is over.
    deferred: Cell<u64>,
    /// Where the registers of the hit that began the thread's current flow are (its stub's
    /// frame; 0 when unknown or none: [`leave`] clears it): a later hit whose own frames cover
    /// them, with that flow still busy, finds the flow left for good (see [`abandoned`]). Who
    /// pauses or interrupts a flow puts it back after.
    flow_frame: Cell<u64>,
    /// The stack pointer that flow's handlers began with (on the handler stack if its stub
    /// moved there).
    flow_rsp: Cell<u64>,
    /// What the thread had as it went into its last call that makes a `vfork` child (see
    /// [`note_vfork_parent`]).
    vfork_parent: Cell<VforkParent>,
    /// The registers (a `PtRegs`) of the application's system call this thread is making,
    /// whose entry handlers ran (0 for none): a signal handler that interrupts the call runs
    /// its exit handlers first, where the kernel's tracepoint shows its exit (see
    /// [`interrupted_call_regs`]).
    call_regs: Cell<u64>,
    /// The stack pointer of the innermost application signal handler running on this thread
    /// ([`in_signal_handler`]; 0 for none), which marks the handler stack in use while it runs:
    /// a handler that leaves by `siglongjmp` never puts the byte back, and a later hit above
    /// that frame finds it left for good (see [`heal_stack_in_use`]). Bit 0 set: nothing else
    /// held the handler stack as the handler began (the byte was 0, or the thread was not busy:
    /// held by our work around the application's call the handler interrupted or by a stub at
    /// the edge of the stack; and no other handler ran), so that it is free once the handler is
    /// gone; only then is it freed.
    signal_frame: Cell<u64>,
}

/// The part of a thread's [`HookThread`] that a `vfork` child, which runs on its parent's
/// thread-locals while the parent waits, changes as it runs our code, and leaves changed if it
/// dies in the middle of it (killed while a call our code made for it blocks): put back when
/// the parent goes on (see [`restore_vfork_parent`]). The rest (the handler stack, the shadow
/// stack) is memory the child may have set up for the thread, which stays valid in the parent.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct VforkParent {
    state: ThreadState,
    selector: u8,
    stack_in_use: u8,
    app_call: u8,
    interruption: u8,
    deferred: u64,
    flow_frame: u64,
    flow_rsp: u64,
}

const _: () = assert!(
    std::mem::size_of::<HookThread>() == 128
        && std::mem::offset_of!(HookThread, entering) == 4
        && std::mem::offset_of!(HookThread, selector) == 16
        && std::mem::offset_of!(HookThread, stack_in_use) == 17
        && std::mem::offset_of!(HookThread, stack_registered) == 18
        && std::mem::offset_of!(HookThread, app_call) == 19
        && std::mem::offset_of!(HookThread, in_use_sink) == 17 + 4
        && std::mem::offset_of!(HookThread, dispatch_off) == 22
        && std::mem::offset_of!(HookThread, forking) == 23
        && std::mem::offset_of!(HookThread, stack_top) == 24
        && std::mem::offset_of!(HookThread, alt_stack) == 32
        && std::mem::offset_of!(HookThread, deferred) == 56
        && std::mem::offset_of!(HookThread, flow_frame) == 64
        && std::mem::offset_of!(HookThread, flow_rsp) == 72
        && std::mem::offset_of!(HookThread, vfork_parent) == 80
        && std::mem::size_of::<VforkParent>() == 32
        && std::mem::offset_of!(HookThread, call_regs) == 112
        && std::mem::offset_of!(HookThread, signal_frame) == 120
);

// The hook engine's thread-local, defined here in the initial-exec model (`@GOTTPOFF`), which
// Rust code cannot ask for: a hit reaches it with two instructions, not a `__tls_get_addr`
// call (a Rust thread-local in a shared library is general-dynamic), and it makes the linker
// mark the library DF_STATIC_TLS, so glibc places the library's whole thread-local block in
// static TLS for every thread, existing ones included, also when the agent comes by `dlopen`
// (`bpftime attach PID`). Without that, each thread got the block at its first access, from
// `malloc` inside `__tls_get_addr`: a probe on `malloc` ran into itself, and a system call
// intercepted inside `malloc` (its `brk`, `mmap`) waited for ever on the arena lock the same
// thread held. Signal handlers may use it too: it is one load from `%fs`.
std::arch::global_asm!(
    ".section .tdata,\"awT\",@progbits",
    ".p2align 3",
    ".globl bpftime_hook_thread",
    ".hidden bpftime_hook_thread",
    ".type bpftime_hook_thread, @tls_object",
    ".size bpftime_hook_thread, 128",
    "bpftime_hook_thread:",
    ".zero 16",
    ".byte 1",
    ".zero 5",
    ".byte 1",
    ".zero 105",
    ".text",
);

/// This thread's [`HookThread`].
#[inline(always)]
fn thread() -> &'static HookThread {
    let p: *const HookThread;
    // SAFETY: the initial-exec TLS sequence for `bpftime_hook_thread` (x86-64 psABI): its
    // offset from the thread pointer, read from the GOT, added to `%fs:0`, the thread pointer.
    // The result is this thread's copy, 128 bytes laid out as HookThread (checked above), alive
    // as long as the thread; only this thread touches it (Cells, never shared).
    unsafe {
        std::arch::asm!(
            "mov {p}, qword ptr [rip + bpftime_hook_thread@GOTTPOFF]",
            "add {p}, qword ptr fs:[0]",
            p = out(reg) p,
            options(nostack, readonly),
        );
        &*p
    }
}

/// Sets this thread's state, and its syscall selector with it.
#[inline(always)]
fn set_state(t: &HookThread, st: ThreadState) {
    t.state.set(st);
    t.selector.set(if st.busy { 0 } else { 1 });
}

/// Notes that system call interception is on for this thread (see `HookThread::dispatch_off`).
pub(crate) fn note_dispatch_on() {
    thread().dispatch_off.set(0);
}

/// Notes whether glibc's `fork` runs its handlers on this thread (see `HookThread::forking`).
pub(crate) fn set_forking(on: bool) {
    thread().forking.set(on as u8);
}

/// Whether glibc's `fork` runs its handlers on this thread.
pub(crate) fn forking() -> bool {
    thread().forking.get() != 0
}

/// Whether system call interception was turned on for this thread.
pub(crate) fn dispatch_on() -> bool {
    thread().dispatch_off.get() == 0
}

/// The address of this thread's syscall selector byte (stable for the thread's life).
pub(crate) fn selector() -> *mut u8 {
    thread().selector.as_ptr()
}

/// What a hit may do.
pub(crate) enum Admission {
    /// Run the handlers at this level; restore the state after.
    Run(usize, ThreadState),
    /// A call made by our own code: not a hit at all.
    Ignore,
    /// A hit that cannot run now.
    Miss,
}

/// Whether a hit on this thread may run its handlers now; `Run` marks the thread busy.
#[inline(always)]
pub(crate) fn admit() -> Admission {
    admit_with(0)
}

/// [`admit`] for a hit whose registers are `regs` (its stub's frame, or a signal handler's
/// copy), which lets it find the thread's flow abandoned (see [`abandoned`]) and start afresh.
#[inline(always)]
pub(crate) fn admit_at(regs: &PtRegs) -> Admission {
    admit_with(regs as *const PtRegs as u64)
}

/// [`admit_at`] with the registers' address, 0 if none.
#[inline(always)]
fn admit_with(frame: u64) -> Admission {
    let t = thread();
    let mut st = t.state.get();
    if st.busy {
        // Signals deferred as this hit entered wait for the busy work's end.
        t.entering.set(0);
        if !abandoned(t, st, frame) {
            return Admission::Ignore;
        }
        st = ThreadState { busy: false, agent: false, depth: 0, warm: st.warm };
    }
    if st.agent || st.depth as usize >= NEST_LEVELS {
        // Nothing runs: the signals deferred as it entered run now.
        t.entering.set(0);
        release_deferred(t);
        Admission::Miss
    } else {
        // The flow's registers on both sides of the state: a jump out of the handlers leaves
        // them found, and a flow a signal begins in between (which clears them as it leaves)
        // never lends its own. (A flow that begins where another is paused or interrupted,
        // inside `making_application_call` or `in_signal_handler`, has theirs put back after.)
        let flow = (frame, stack_pointer());
        set_flow(t, flow);
        compiler_fence(Ordering::SeqCst);
        set_state(t, ThreadState { busy: true, depth: st.depth + 1, ..st });
        compiler_fence(Ordering::SeqCst);
        // Busy now: signals wait for the flow's end (`leave`), those deferred as it entered too.
        t.entering.set(0);
        set_flow(t, flow);
        // (Busy: its system calls are ours, which interception lets through.)
        if t.signal_frame.get() & 1 != 0 && t.stack_in_use.get() != 0 {
            heal_stack_in_use(t, frame);
        }
        Admission::Run(st.depth as usize, st)
    }
}

/// Frees the handler stack that a signal handler left marked in use: it marks it while it
/// runs ([`in_signal_handler`]) and one that leaves by `siglongjmp` never puts the byte back,
/// so every later hit of the thread stayed on the application's stack (a goroutine's few
/// kilobytes, say). The handler is gone if this hit's registers (`frame`, not on the handler
/// stack) lie above its stack pointer on one stack (code running inside it is always below),
/// or if that pointer is on the thread's signal stack and the thread is off it (the kernel
/// takes the signal stack for free then too). Only a handler that began with the stack free
/// and no other handler running frees it (bit 0 of `signal_frame`): one nested in another, or
/// one that interrupted work on the handler stack, leaves it to whoever held it before.
/// Called with the thread busy (its system calls are let through).
#[cold]
#[inline(never)]
fn heal_stack_in_use(t: &HookThread, frame: u64) {
    let (handler, here) = (t.signal_frame.get() & !1, stack_pointer());
    if frame == 0 || on_handler_stack_at(t, here) {
        return;
    }
    let [alt_base, _, alt_size] = t.alt_stack.get();
    let on_signal_stack = handler.wrapping_sub(alt_base) < alt_size;
    // (A hit on the signal stack itself is inside the handler, or one nested in it.)
    let gone = if on_signal_stack && frame.wrapping_sub(alt_base) >= alt_size {
        let mut now = [0u64; 3];
        // SAFETY: sigaltstack(2) writing the current stack_t (24 bytes) into our array, by our
        // own `syscall` instruction.
        let read = unsafe { crate::syscalls::raw_syscall(libc::SYS_sigaltstack as u64, [0, now.as_mut_ptr() as u64, 0, 0, 0, 0]) } == 0;
        read && now[1] & libc::SS_ONSTACK as u64 == 0
    } else {
        !on_signal_stack && frame > handler && below_on_one_stack(handler, frame)
    };
    if gone {
        t.stack_in_use.set(0);
        t.signal_frame.set(0);
    }
}

/// Whether stack pointer `at` lies on the thread's handler stack (none: `stack_top` 0 or 1).
fn on_handler_stack_at(t: &HookThread, at: u64) -> bool {
    t.stack_top.get().wrapping_sub(at) <= (HANDLER_STACK + PAGE) as u64
}

/// How far below a hit's registers the frames of its own admission may reach: the vector save
/// area, the dispatch.
const OWN_FRAMES: u64 = 64 << 10;

/// Whether a hit whose registers are at `frame`, which finds the thread busy at level 1, shows
/// that flow abandoned: a signal handler the agent does not wrap (one loaded by `bpftime
/// attach` wraps none) ran on top of a hit's handlers and left them by `siglongjmp`, so the
/// flow never ended, and every later hit of the thread would have been taken for a call of the
/// handlers' own. It is abandoned if this hit's own frames (from here up to the end of its
/// registers, on one stack) cover that flow's registers, or if those lie below all of them in
/// the same mapping (a stack holds nothing live below its stack pointer; a flow a handler's jump
/// left inside that handler is deeper than the code the jump goes back to): a live flow's
/// frames are never written over, so that flow can never resume. A call its handlers make has
/// its frames below them, and a hit on another stack (the handler stack, a signal stack, a
/// coroutine's) covers nothing of them. Not found: hits whose frames lie below them (a call
/// from deeper down), flows begun with no registers (system calls), the agent's own work,
/// deeper levels, a flow below a hit on a signal stack or in the heap (a coroutine's stack may
/// be there: a handler that switches coroutines would leave a live flow below another's hits).
#[cold]
#[inline(never)]
fn abandoned(t: &HookThread, st: ThreadState, frame: u64) -> bool {
    let (flow, here, size) = (t.flow_frame.get(), stack_pointer(), pt::SIZE as u64);
    let ours = here < frame && frame + size - here <= OWN_FRAMES && !on_handler_stack_at(t, here);
    if st.agent || st.depth != 1 || flow == 0 || !ours || flow >= frame + size {
        return false;
    }
    // Its registers covered by this hit's frames, or below them all in the same mapping (a
    // stack: the region below the stack pointer holds nothing live, so a flow there was left
    // too; the flow a jump left inside a signal handler, deeper than the code it jumps back to).
    let covered = flow + size > here;
    if !covered && !below_on_one_stack(flow, here) {
        return false;
    }
    // What the abandoned work held (a lock) stays held: its next hit would wait for it for good.
    if holds_agent_lock() {
        return false;
    }
    if let Some(a) = AGENT_STATE.get() {
        (a.forget_abandoned_run)();
    }
    if on_handler_stack_at(t, t.flow_rsp.get()) {
        // The abandoned stub moved onto the handler stack, where nothing is live any more;
        // this hit's stub found it in use and stays where it is, leaving the byte alone.
        t.stack_in_use.set(0);
    }
    true
}

/// Makes `frame` and `handlers_sp` the registers' address and the handlers' stack pointer of the
/// thread's current flow.
#[inline(always)]
fn set_flow(t: &HookThread, (frame, handlers_sp): (u64, u64)) {
    t.flow_rsp.set(handlers_sp);
    t.flow_frame.set(frame);
}

thread_local! {
    /// The last flow [`below_on_one_stack`] answered for, the 64 KiB of stack asked from, and
    /// the answer: the next hits of a thread whose abandoned flow is elsewhere are ignored
    /// without reading the maps again.
    static BELOW_ANSWER: Cell<(u64, u64, bool)> = const { Cell::new((0, 0, false)) };
}

/// Whether a flow's registers at `flow` lie below stack pointer `here` on the same stack: in one
/// mapping, not the heap's, and `here` not on the thread's signal stack.
fn below_on_one_stack(flow: u64, here: u64) -> bool {
    if let Ok((f, h, answer)) = BELOW_ANSWER.try_with(Cell::get) {
        if (f, h) == (flow, here >> 16) {
            return answer;
        }
    }
    let mut now = [0u64; 3];
    // SAFETY: sigaltstack(2) writing the current stack_t (24 bytes) into our array, by our own
    // `syscall` instruction (the thread is busy: interception lets it through).
    let failed = unsafe { crate::syscalls::raw_syscall(libc::SYS_sigaltstack as u64, [0, now.as_mut_ptr() as u64, 0, 0, 0, 0]) } != 0;
    let answer = !failed && now[1] & libc::SS_ONSTACK as u64 == 0 && one_mapping(flow, here);
    let _ = BELOW_ANSWER.try_with(|c| c.set((flow, here >> 16, answer)));
    answer
}

/// Whether addresses `a` and `b` lie in one mapping of this process, not the heap (`/proc/self/maps`, read
/// with our own system calls, allocating nothing: this runs inside a hit).
fn one_mapping(a: u64, b: u64) -> bool {
    use crate::syscalls::raw_syscall;
    // SAFETY: openat(2) of a NUL-terminated path, read-only.
    let fd = unsafe {
        raw_syscall(libc::SYS_openat as u64, [libc::AT_FDCWD as u64, c"/proc/self/maps".as_ptr() as u64, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0])
    } as i64;
    if fd < 0 {
        return false;
    }
    // Each line starts `lo-hi `, in hex, and ends with the name (`[heap]`): parsed byte by
    // byte.
    const HEAP: &[u8] = b"[heap]";
    let (mut lo, mut hi, mut field, mut found, mut tail) = (0u64, 0u64, 0u8, None, 0usize);
    let mut buf = [0u8; 4096];
    'read: loop {
        // SAFETY: read(2) into our buffer.
        let n = unsafe { raw_syscall(libc::SYS_read as u64, [fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0]) } as i64;
        if n <= 0 {
            break;
        }
        for &c in &buf[..n as usize] {
            match (field, c) {
                (3, b'\n') => {
                    // The line of `a`: its name decides.
                    found = found.map(|same| same && tail != HEAP.len());
                    break 'read;
                }
                (_, b'\n') => (lo, hi, field, tail) = (0, 0, 0, 0),
                (0, b'-') => field = 1,
                (1, b' ') => {
                    field = 2;
                    if (lo..hi).contains(&a) {
                        found = Some((lo..hi).contains(&b));
                        field = 3;
                    }
                }
                (3, _) => {
                    // How much of `[heap]` the line ends with so far.
                    tail = if tail < HEAP.len() && c == HEAP[tail] {
                        tail + 1
                    } else if c == HEAP[0] {
                        1
                    } else {
                        0
                    };
                }
                (0 | 1, _) => {
                    let d = (c as char).to_digit(16).unwrap_or(0) as u64;
                    if field == 0 {
                        lo = lo << 4 | d;
                    } else {
                        hi = hi << 4 | d;
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: close(2) of the descriptor opened above.
    unsafe { raw_syscall(libc::SYS_close as u64, [fd as u64, 0, 0, 0, 0, 0]) };
    found.unwrap_or(false)
}

/// What the agent tells the hook engine of its own state (see [`set_agent_state`]).
struct AgentState {
    /// Whether this thread holds a lock of the agent's (its allocator's, a region's), with no
    /// side effect.
    holds_lock: fn() -> bool,
    /// Frees the run context a flow left by `siglongjmp` inside a probe's handlers held, for the
    /// next run.
    forget_abandoned_run: fn(),
}

static AGENT_STATE: OnceLock<AgentState> = OnceLock::new();

/// Tells the hook engine (once) how to ask whether this thread holds a lock of the agent's
/// (`holds_lock`: a flow found abandoned is not replaced then, and no programs run from a
/// signal wrapper over it: they would wait for it for good) and how to free what an abandoned
/// flow's runs held (`forget_abandoned_run`). Without it, abandoned flows are replaced whatever
/// they held.
pub fn set_agent_state(holds_lock: fn() -> bool, forget_abandoned_run: fn()) {
    let _ = AGENT_STATE.set(AgentState { holds_lock, forget_abandoned_run });
}

/// Whether this thread holds a lock of the agent's (see [`set_agent_state`]).
fn holds_agent_lock() -> bool {
    AGENT_STATE.get().is_some_and(|a| (a.holds_lock)())
}

/// The stack pointer where it is called.
#[inline(always)]
fn stack_pointer() -> u64 {
    let here: u64;
    // SAFETY: reads the stack pointer.
    unsafe { std::arch::asm!("mov {}, rsp", out(reg) here, options(nomem, nostack, preserves_flags)) };
    here
}

/// Restores the state a flow found on entering (a thread once warm stays warm); back out of
/// our work, the thread takes the signals deferred meanwhile.
#[inline(always)]
pub(crate) fn leave(st: ThreadState) {
    let t = thread();
    set_state(t, ThreadState { warm: st.warm || t.state.get().warm, ..st });
    // After the state: a jump out before it leaves the flow found.
    compiler_fence(Ordering::SeqCst);
    t.flow_frame.set(0);
    if !st.busy {
        release_deferred(t);
    }
}

/// Unblocks the signals deferred while the thread's work ran, now it is over, unless that work
/// runs on the handler stack: then whoever holds the stack releases them once off it (a stub,
/// see [`emit_deferred_release`]; [`on_handler_stack`]), so that a handler that leaves by
/// `siglongjmp` leaves nothing of ours held (here it would leave the stack in use for good).
fn release_deferred(t: &HookThread) {
    if t.deferred.get() != 0 && !held_stack_at(t, stack_pointer()) {
        take_deferred_signals(t);
    }
}

/// Whether stack pointer `at` (of code a signal interrupted) lies on this thread's handler
/// stack, in use: the code there is ours (a stub, a dispatcher, the work of
/// [`on_handler_stack`]), busy or about to leave the stack, and a signal that lands there
/// waits until it has (see [`release_deferred`]).
pub(crate) fn on_held_handler_stack(at: u64) -> bool {
    held_stack_at(thread(), at)
}

/// Whether `at` lies on `t`'s handler stack while it is in use.
fn held_stack_at(t: &HookThread, at: u64) -> bool {
    t.stack_in_use.get() != 0 && on_handler_stack_at(t, at)
}

/// Notes what this thread has as it goes into a call that makes a `vfork` child (our code's
/// last work before the call: its handlers have run and left), for [`restore_vfork_parent`].
/// The in-use byte of the handler stack is noted as the stub that runs this code leaves it:
/// free if the stub moved onto that stack (it puts the byte back as it found it).
pub(crate) fn note_vfork_parent() {
    let t = thread();
    let stack_in_use = if on_handler_stack_at(t, stack_pointer()) { 0 } else { t.stack_in_use.get() };
    t.vfork_parent.set(VforkParent {
        state: t.state.get(),
        selector: t.selector.get(),
        stack_in_use,
        app_call: t.app_call.get(),
        interruption: t.interruption.get(),
        deferred: t.deferred.get(),
        flow_frame: t.flow_frame.get(),
        flow_rsp: t.flow_rsp.get(),
    });
}

/// Puts back what [`note_vfork_parent`] noted, in the parent of a `vfork` child going on after
/// the call (the child has exec'd, exited or died, wherever it was in our code). The in-use
/// byte stays as it is where this runs on the handler stack (the stub that moved here holds
/// it). Were the child to make a `vfork` call of its own, what its parent finds is the child's
/// state at that call: ours as well, since the child ran the application's code then.
pub(crate) fn restore_vfork_parent() {
    let t = thread();
    let p = t.vfork_parent.get();
    t.state.set(p.state);
    t.selector.set(p.selector);
    if !on_handler_stack_at(t, stack_pointer()) {
        t.stack_in_use.set(p.stack_in_use);
    }
    t.app_call.set(p.app_call);
    t.interruption.set(p.interruption);
    // The parent is in our work (it noted this there), past any hit's entry; where its own
    // handlers run is not known from the child's (it frees nothing then).
    t.entering.set(0);
    t.signal_frame.set(0);
    // The call is over (the child may have named its own registers and died in its call).
    t.call_regs.set(0);
    // Signals deferred since (one delivered as the call returned, to a thread the child left
    // busy: its SIGCHLD) stay noted, to be unblocked; unblocking one the child noted for its
    // own mask does nothing here.
    t.deferred.set(p.deferred | t.deferred.get());
    t.flow_frame.set(p.flow_frame);
    t.flow_rsp.set(p.flow_rsp);
}

/// Whether this thread's work now is the application's own system call (see
/// [`making_application_call`]).
pub(crate) fn in_application_call() -> bool {
    thread().app_call.get() != 0
}

/// Runs `f`, which makes the application's own system call for it (intercepted), outside our
/// work: the thread is as the application left it (the flow's handlers paused, its level
/// free), so that the application's signals interrupt the call as ever, and a handler that
/// leaves the call by `siglongjmp` (a timeout on a blocking read) abandons nothing of ours.
/// Signals deferred by the enter handlers run now, before the call, as they would have without
/// us.
pub(crate) fn making_application_call<R>(f: impl FnOnce() -> R) -> R {
    let t = thread();
    let during = t.state.get();
    // Inside an admitted flow (not the agent's own work, nor a miss's unadmitted call).
    let paused = during.busy && !during.agent && during.depth > 0;
    let flow = (t.flow_frame.get(), t.flow_rsp.get());
    if paused {
        set_state(t, ThreadState { busy: false, depth: during.depth - 1, ..during });
    }
    // The application's call from here on, once the flow is paused (a signal that lands
    // before waits for our work to end; one that landed in between, neither deferred nor
    // outside our work, had its handler's `rt_sigreturn` ignored as ours).
    compiler_fence(Ordering::SeqCst);
    let was = t.app_call.replace(1);
    if t.deferred.get() != 0 {
        take_deferred_signals(t);
    }
    // The call itself is ours to make: interception lets it through.
    let selector = t.selector.replace(0);
    let r = f();
    // No longer the application's call before the flow is busy again: a signal that lands
    // once it is waits for our work to end (see `signals::defer`), as it would anywhere else
    // in it; one that landed in between had its handler's `rt_sigreturn` ignored as ours.
    t.app_call.set(was);
    compiler_fence(Ordering::SeqCst);
    t.selector.set(selector);
    if paused {
        set_state(t, during);
    }
    compiler_fence(Ordering::SeqCst);
    set_flow(t, flow);
    r
}

/// Notes that the application's call this thread is making returns -ERESTARTSYS to our code
/// once the signal handler now starting returns, for our code to restart it.
pub(crate) fn note_restart() {
    thread().interruption.set(1);
}

/// Whether an interruption of the application's call is noted and not yet taken (see
/// [`note_restart`], [`note_interrupted`]).
pub(crate) fn interruption_noted() -> bool {
    thread().interruption.get() != 0
}

/// Runs `f` at the thread's next level as [`run_as_hit`] does, from an application's signal
/// handler's wrapper (before or after the handler): outside the application's call the signal
/// interrupted, so that signals arriving meanwhile wait for the programs to end, and with the
/// selector as the interrupted flow had it afterwards; not where the interrupted code holds a
/// lock of ours. Whether `f` ran.
pub(crate) fn run_in_signal_wrapper(f: impl FnOnce(usize)) -> bool {
    // Not where the interrupted code holds a lock of ours (the allocator's, a region's): the
    // programs would wait for it for good.
    if holds_agent_lock() {
        return false;
    }
    let t = thread();
    let (selector, app_call, entering) = (t.selector.get(), t.app_call.replace(0), t.entering.replace(0));
    // Signals the interrupted flow deferred stay blocked until it releases them (the signal's
    // return puts its mask back): this run releases only its own.
    let outer = t.deferred.replace(0);
    let mut ran = false;
    run_as_hit(|level| {
        f(level);
        ran = true;
    });
    t.deferred.set(t.deferred.get() | outer);
    t.app_call.set(app_call);
    t.selector.set(selector);
    t.entering.set(entering);
    ran
}

/// Whether a restart that is ours to make was noted (see [`note_restart`]) and not yet taken.
pub(crate) fn restart_noted() -> bool {
    matches!(Interruption::from_byte(thread().interruption.get()), Interruption::Restart { .. })
}

/// Notes that the application's call being made for it was interrupted by a signal whose
/// handler then ran, and returns EINTR (not restarted).
pub(crate) fn note_interrupted() {
    thread().interruption.set(2);
}

/// Notes that the exit handlers of the interrupted call (see [`note_restart`],
/// [`note_interrupted`]) have run already, before the signal's handler.
pub(crate) fn note_exit_reported() {
    let t = thread();
    t.interruption.set(t.interruption.get() | 4);
}

/// How the application's call that just returned was interrupted by a signal whose handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// It was not.
    None,
    /// Set up to restart, a restart that is ours to make (see [`note_restart`]).
    Restart { exit_reported: bool },
    /// Not restarted: it returns EINTR (see [`note_interrupted`]).
    Interrupted { exit_reported: bool },
}

impl Interruption {
    fn from_byte(b: u8) -> Interruption {
        let exit_reported = b & 4 != 0;
        match b & 3 {
            1 => Interruption::Restart { exit_reported },
            2 => Interruption::Interrupted { exit_reported },
            _ => Interruption::None,
        }
    }
}

/// How the application's call that just returned was interrupted. Clears it.
pub(crate) fn take_interruption() -> Interruption {
    Interruption::from_byte(thread().interruption.replace(0))
}

/// Makes `regs` (a `PtRegs`'s address, or 0) the registers of the application's call this
/// thread makes now, whose entry handlers ran ([`in_signal_handler`] sets them aside for a
/// handler's own calls).
#[inline(always)]
pub(crate) fn set_call_regs(regs: u64) {
    thread().call_regs.set(regs);
}

/// The registers of the application's call that a signal now interrupts, whose entry handlers
/// ran (see [`set_call_regs`]), if the thread is making one.
pub(crate) fn interrupted_call_regs() -> Option<u64> {
    let t = thread();
    (t.app_call.get() != 0).then(|| t.call_regs.get()).filter(|&r| r != 0)
}

/// How many stubs' entry windows [`ENTRY_WINDOWS`] holds at most (past that, a signal in a
/// newer stub's window runs at once, as it did before windows were known).
const MAX_ENTRY_WINDOWS: usize = 32768;

/// The entry window of every stub that marks its hits (see [`emit_probe_call`]): from the
/// stub's first instruction to the end of its mark, where a signal handler finds a hit that
/// began (the probed instruction ran) with nothing on the thread to show it yet. Each is its
/// start above its length in 16 bits (user addresses take 47); appended as stubs are built,
/// before any code jumps to them, and never removed (nor are the stubs).
static ENTRY_WINDOWS: [AtomicU64; MAX_ENTRY_WINDOWS] = [const { AtomicU64::new(0) }; MAX_ENTRY_WINDOWS];
static ENTRY_WINDOW_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records that a stub's entry window is `[start, end)`.
fn register_entry_window(start: u64, end: u64) {
    let len = end.saturating_sub(start);
    if len == 0 || len >= 1 << 16 || start >= 1 << 48 {
        return;
    }
    let i = ENTRY_WINDOW_COUNT.fetch_add(1, Ordering::AcqRel);
    if let Some(w) = ENTRY_WINDOWS.get(i) {
        w.store(start << 16 | len, Ordering::Release);
    }
}

/// Whether a signal that interrupted this thread at `ip` finds a hit entering: the thread
/// between a stub's first instruction and the hit's admission, its programs yet to run. The
/// probed instruction ran (the jump to the stub), so on the kernel the uprobe's int3 had run,
/// and with it the programs, before any signal: the signal must wait for them.
pub(crate) fn entering_at(ip: u64) -> bool {
    if thread().entering.get() != 0 {
        return true;
    }
    // (Most signals land elsewhere: only code we made can hold a window.)
    if !patch::is_own_code(ip) {
        return false;
    }
    let n = ENTRY_WINDOW_COUNT.load(Ordering::Acquire).min(MAX_ENTRY_WINDOWS);
    ENTRY_WINDOWS[..n].iter().any(|w| {
        let w = w.load(Ordering::Acquire);
        ip.wrapping_sub(w >> 16) < w & 0xffff
    })
}

/// Notes that signals `bits` wait, blocked, for this thread's current work to end.
pub(crate) fn defer_signals(bits: u64) {
    let t = thread();
    t.deferred.set(t.deferred.get() | bits);
}

/// Unblocks the signals deferred while the thread was busy: the kernel delivers them as the
/// call returns, to a thread that now runs the application's code as far as they can tell.
#[cold]
#[inline(never)]
fn take_deferred_signals(t: &HookThread) {
    let bits = t.deferred.replace(0);
    // Our call, not the application's: interception lets it through (the handlers the
    // signals run set the selector as they need it).
    let selector = t.selector.replace(0);
    // SAFETY: rt_sigprocmask(2) SIG_UNBLOCK on this thread with a valid 8-byte set, by our own
    // `syscall` instruction (libc's `syscall()` may hold a rewritten site, which would take
    // it for the application's).
    unsafe { crate::syscalls::raw_syscall(libc::SYS_rt_sigprocmask as u64, [libc::SIG_UNBLOCK as u64, &bits as *const u64 as u64, 0, 8, 0, 0]) };
    t.selector.set(selector);
}

#[cold]
#[inline(never)]
fn miss_all(handlers: &HandlerList) {
    MISSED.fetch_add(1, Ordering::Relaxed);
    for (_, h) in handlers {
        h.on_miss();
    }
}

const SHADOW_DEPTH: usize = 4096;

/// Return addresses taken from a thread's stack by return probes.
struct ShadowStack {
    len: usize,
    /// (real return address, site, stack pointer at entry)
    frames: [(u64, *const Site, u64); SHADOW_DEPTH],
}

/// Hits that could not run (see [`ProbeHandler::on_miss`]), for diagnostics.
pub static MISSED: AtomicU64 = AtomicU64::new(0);

/// This thread's shadow stack, made at its first return probe in the normal flow (a signal
/// handler nested in a handler does not allocate: the allocator may be held below it).
fn shadow(level: usize) -> *mut ShadowStack {
    let t = thread();
    let s = &t.shadow;
    let mut p = s.get();
    if p.is_null() && level == 0 {
        // One per thread, freed at its exit with its handler stack when empty.
        // Allocated zeroed in place: built on the stack first (as `Box::new` may), its
        // 96 KiB would overflow a signal handler's alternate stack.
        // SAFETY: the layout has a non-zero size; all-zero bytes are an empty stack (a
        // zero length and null/zero frames).
        p = unsafe { std::alloc::alloc_zeroed(std::alloc::Layout::new::<ShadowStack>()) } as *mut ShadowStack;
        s.set(p);
    }
    p
}

/// Runs several handlers (kept out of line: the common single-handler hit then needs fewer
/// saved registers).
#[inline(never)]
fn run_all(handlers: &[(ProbeId, Arc<dyn ProbeHandler>)], regs: &PtRegs, level: usize) -> Option<u64> {
    let mut asked = None;
    for (_, h) in handlers {
        asked = h.on_hit(regs, level).or(asked);
    }
    asked
}

/// Runs handlers; the last override asked for, if any.
#[inline(always)]
fn run_list(handlers: &HandlerList, regs: &PtRegs, level: usize) -> Option<u64> {
    match handlers.as_slice() {
        [] => None,
        [(_, h)] => h.on_hit(regs, level),
        many => run_all(many, regs, level),
    }
}

/// Runs a site's entry handlers and, for a function entry with return probes, replaces the
/// return address at `regs.sp` by the return stub. Shared by the jump stubs and int3 traps.
/// Returns the value a handler asked the function to return without running (only at a
/// function's entry).
#[inline(always)]
fn on_entry(site: &Site, regs: &PtRegs) -> Option<u64> {
    let wants_return = site.at_entry && !list(&site.ret).is_empty() && !site.returns_patched();
    match admit_at(regs) {
        Admission::Ignore => None,
        Admission::Miss => {
            miss_all(list(&site.entry));
            if wants_return {
                miss_all(list(&site.ret));
            }
            None
        }
        Admission::Run(level, before) => {
            let asked = if before.warm {
                let asked = entry_work(site, regs, level, wants_return);
                leave(before);
                asked
            } else {
                first_hit(before, || entry_work(site, regs, level, wants_return))
            };
            asked.filter(|_| site.at_entry)
        }
    }
}

/// An admitted entry hit's work: the handlers, and the return address replaced for return
/// probes. (A function, not a closure, so that the common path has it inlined.)
#[inline(always)]
fn entry_work(site: &Site, regs: &PtRegs, level: usize, wants_return: bool) -> Option<u64> {
    let asked = run_list(list(&site.entry), regs, level);
    if wants_return {
        let replaced = if site.returns_twice { return_through_own_stub(site, regs.sp) } else { push_return(site, regs.sp, level) };
        if !replaced {
            miss_all(list(&site.ret));
        }
    }
    asked
}

/// Records the return address at `entry_sp` (a function's first instruction) on the shadow stack and
/// replaces it with the return stub. Safe against a signal handler that probes on the same
/// thread at any point: the slot is claimed before it is filled, and the return address is
/// replaced only once the record is complete.
fn push_return(site: &Site, entry_sp: u64, level: usize) -> bool {
    let s = shadow(level);
    if s.is_null() {
        return false;
    }
    // SAFETY: the shadow stack belongs to this thread; nested flows (signal handlers) only use
    // the slots above `len`, which they restore before returning to us.
    unsafe {
        let slot = entry_sp as *mut u64;
        // At a function's first instruction [sp] is its return address, on this thread's stack.
        let real = slot.read();
        // The newest frame is a caller's unless a function was abandoned.
        if level == 0 && (*s).len > 0 && (*s).frames[(*s).len - 1].2 <= entry_sp {
            drop_abandoned(s, entry_sp, real);
        }
        let i = (*s).len;
        if i >= SHADOW_DEPTH {
            return false;
        }
        (*s).len = i + 1;
        compiler_fence(Ordering::SeqCst);
        (*s).frames[i] = (real, site as *const Site, entry_sp);
        compiler_fence(Ordering::SeqCst);
        // The return stub will send the function back to `real`.
        slot.write(return_stub());
    }
    true
}

/// Called by a site's entry stub. Non-zero: a handler overrode the function's result (now in
/// `regs.ax`): the stub returns to the caller instead of running the function.
extern "C" fn entry_dispatch(site: &Site, regs: &mut PtRegs) -> u64 {
    match on_entry(site, regs) {
        Some(rc) => {
            regs.ax = rc;
            returned_at_entry(site, regs);
            1
        }
        None => 0,
    }
}

/// How many of the newest shadow frames a push looks at for abandoned ones.
const ABANDONED_SCAN: usize = 64;

/// Drops the newest shadow frames whose functions will never return: left by `longjmp`,
/// `siglongjmp` out of a signal handler, or an exception unwinding past them (C error handling
/// does this all the time), they would otherwise fill the shadow stack and every later return
/// probe on the thread would be a miss. A frame is abandoned once its return-address slot no
/// longer holds the return stub (a live frame's always does): `real`, just read at `entry_sp`,
/// tells for frames at that slot; a later frame at the same slot that found no stub there tells
/// for those below it; a frame deeper than `entry_sp` has its slot read (safely: it may be on
/// a signal stack since freed). A frame that may be live (another stack's, a coroutine's) is
/// kept. Their return probes do not run, as on the kernel (the function did not return; no
/// run was missed). The newest go, older ones become holes (`sp` 0, which no return matches)
/// that go once they are on top.
/// Only the normal flow (`level` 0) calls this, and not while a return is being popped below
/// it: then no push or pop of ours is half done.
///
/// # Safety
/// `s` is this thread's shadow stack.
#[cold]
#[inline(never)]
unsafe fn drop_abandoned(s: *mut ShadowStack, entry_sp: u64, real: u64) {
    let stub = return_stub();
    let len = (*s).len;
    let mut top = len;
    for i in (len.saturating_sub(ABANDONED_SCAN)..len).rev() {
        let (_, site, slot) = (*s).frames[i];
        if slot > entry_sp {
            // A caller's frame: it and those below it are live.
            break;
        }
        let abandoned = site.is_null()
            || (slot == entry_sp && real != stub)
            || (slot < entry_sp && ((i + 1..len).any(|j| (*s).frames[j].2 == slot && (*s).frames[j].0 != stub) || slot_shows_abandoned(slot, stub)));
        if !abandoned {
            continue;
        }
        (*s).frames[i] = (0, std::ptr::null(), 0);
        if i + 1 == top {
            top = i;
        }
    }
    compiler_fence(Ordering::SeqCst);
    (*s).len = top;
}

/// Lets an exception's unwinder past the newest return probe on this thread's stack: called
/// when the unwinder stopped (`_URC_END_OF_STACK`) before finding a handler, because a frame's
/// return address, where it finds the caller, is our return stub. Puts the real return
/// address back in the deepest such frame above `below` (the unwinder's caller's stack), for the unwinder
/// to try again; that function is being unwound (it had no handler), so it will not return and
/// its return probes do not run, as for a `longjmp`. Frames the exception does not reach keep
/// their probes. Returns whether there was such a frame.
pub fn unwind_past_return_probe(below: u64) -> bool {
    let Admission::Run(_, before) = admit() else { return false };
    let s = thread().shadow.get();
    // SAFETY: this thread's shadow stack; no push or pop of it is half done below the
    // unwinder, and a signal handler's flows restore what they change.
    let done = !s.is_null() && unsafe { put_back_deepest(s, below) };
    leave(before);
    done
}

/// See [`unwind_past_return_probe`].
///
/// # Safety
/// `s` is this thread's shadow stack.
unsafe fn put_back_deepest(s: *mut ShadowStack, below: u64) -> bool {
    let stub = return_stub();
    let len = (*s).len;
    let frames = &mut (*s).frames;
    // Slots above `below` from the lowest, until one still holds the stub.
    let mut bound = below;
    let slot = loop {
        let Some(lowest) = frames[..len].iter().filter(|f| !f.1.is_null() && f.2 > bound).map(|f| f.2).min() else { return false };
        if read_word(lowest) == Some(stub) {
            break lowest;
        }
        bound = lowest;
    };
    // The newest frame at that slot, and below it those a tail call chained to it (each found
    // the stub there): the oldest of the chain holds the real return address.
    let chain = |i: usize| frames[i].2 == slot;
    let Some(newest) = (0..len).rev().find(|&i| chain(i)) else { return false };
    let mut origin = newest;
    while frames[origin].0 == stub {
        let Some(older) = (0..origin).rev().find(|&i| chain(i)) else { return false };
        origin = older;
    }
    (slot as *mut u64).write(frames[origin].0);
    for f in &mut frames[origin..=newest] {
        if f.2 == slot {
            *f = (0, std::ptr::null(), 0);
        }
    }
    let mut top = len;
    while top > 0 && frames[top - 1].1.is_null() {
        top -= 1;
    }
    compiler_fence(Ordering::SeqCst);
    (*s).len = top;
    true
}

/// The return address that the word `value`, read from stack slot `slot` by a stack walk of
/// this thread (in a probe handler), stands for: `value` itself, unless a return probe put a
/// stub of ours there at the function's entry; then the address the function will return to,
/// as the kernel shows real return addresses in place of its uretprobe trampoline.
pub fn real_return_address(slot: u64, value: u64) -> u64 {
    if let Some(own) = OWN_STUBS.get().and_then(Option::as_ref).and_then(|stubs| stubs.iter().position(|&s| s == value)) {
        return OWN_RETURN[own].real.load(Ordering::Acquire);
    }
    let s = thread().shadow.get();
    if RETURN_STUB.get() != Some(&value) || s.is_null() {
        return value;
    }
    let stub = value;
    // SAFETY: this thread's shadow stack, read in its own flow: pushes and pops below us are
    // not half done, and a signal handler's flows restore what they change.
    unsafe {
        let frames = &(&(*s).frames)[..(*s).len];
        let at_slot = |below: usize| (0..below).rev().find(|&i| !frames[i].1.is_null() && frames[i].2 == slot);
        // The newest frame at the slot; a tail-called function found the stub there, and the
        // oldest frame of such a chain holds the real address.
        let mut found = at_slot(frames.len());
        while let Some(i) = found.filter(|&i| frames[i].0 == stub) {
            found = at_slot(i);
        }
        found.map_or(value, |i| frames[i].0)
    }
}

/// What the slot of a frame whose function has returned into the return stub holds while the
/// stub saves the registers and pops the frame: the saved `ss`, the last field of the register
/// block the stub builds right below its stack pointer (the slot is the word just below it).
const RETURNING: u64 = 0x2b;
const _: () = assert!(pt::SS == pt::SIZE - 8);

/// Whether a frame's slot shows its function abandoned: readable, and holding neither the
/// return stub (still to return) nor [`RETURNING`] (returning now, its pop interrupted by a
/// signal). A slot that cannot be read says nothing: the frame is kept. The caller is busy
/// (its system call is neither probed nor intercepted).
fn slot_shows_abandoned(slot: u64, stub: u64) -> bool {
    read_word(slot).is_some_and(|w| w != stub && w != RETURNING)
}

/// Reads a word of this process's memory that may not be mapped (`process_vm_readv(2)` on
/// ourselves fails with EFAULT instead of faulting).
fn read_word(addr: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    (crate::syscalls::read_own(addr, &mut word) == 8).then_some(u64::from_ne_bytes(word))
}

/// Called by the return stub; leaves the real return address in `regs.ip`.
extern "C" fn return_dispatch(regs: &mut PtRegs) {
    let entry_sp = regs.sp - 8;
    let s = thread().shadow.get();
    // SAFETY: the shadow stack belongs to this thread, which made the entry; a signal handler
    // nested in this function only pushes and pops above `len`.
    let (real, site) = unsafe {
        // A push in a signal handler nested in this pop never drops our frame: its slot holds
        // the stub, then the stub's `ss` (see [`RETURNING`]).
        let len = if s.is_null() { 0 } else { (*s).len };
        // Our frame is the newest with this stack pointer. Frames above it are another
        // stack's (a coroutine's, still to return) or were left behind by a longjmp.
        let mut k = len;
        while k > 0 && (*s).frames[k - 1].2 != entry_sp {
            k -= 1;
        }
        if k == 0 {
            // No record of this frame: we cannot know where to return. This only happens when
            // a function returns twice through the return address it saved (as setjmp does)
            // under a name GCC's list does not have; there is no safe way on.
            eprintln!("bpftime: uretprobe return without a matching entry (sp {:#x}); aborting", regs.sp);
            std::process::abort();
        }
        let (real, site, _) = (*s).frames[k - 1];
        compiler_fence(Ordering::SeqCst);
        if k == len {
            (*s).len = k - 1;
        } else {
            // Our own work (its system calls are neither probed nor intercepted), with the
            // application's signals held back: a handler that left it by `siglongjmp` (where
            // none is wrapped to wait) would leave the shadow stack half rewritten, and the
            // thread's flow the agent's for good.
            crate::signals::with_signals_deferred(|| without_probes(|| pop_below_others(s, k - 1, len)));
        }
        (real, &*site)
    };
    regs.ip = real;
    run_returns(site, regs);
}

/// Removes frame `ours` (returned) from under newer frames: those whose slot still holds the
/// return stub are live on another stack (coroutines switched with `swapcontext` interleave
/// their frames here) and stay, to be found by their stack pointer when they return; the others
/// were left by a longjmp and go (their return probes do not run). Removed frames in the
/// middle become holes, which go once they are on top.
///
/// # Safety
/// `s` is this thread's shadow stack, with `len` frames; `ours` < `len`.
#[cold]
#[inline(never)]
unsafe fn pop_below_others(s: *mut ShadowStack, ours: usize, len: usize) {
    let stub = return_stub();
    let frames = &mut (*s).frames;
    for f in &mut frames[ours + 1..len] {
        if !f.1.is_null() && slot_shows_abandoned(f.2, stub) {
            *f = (0, std::ptr::null(), 0);
        }
    }
    frames[ours] = (0, std::ptr::null(), 0);
    let mut top = len;
    while top > 0 && frames[top - 1].1.is_null() {
        top -= 1;
    }
    compiler_fence(Ordering::SeqCst);
    (*s).len = top;
}

/// Runs a site's return probes at a return through a stub (`regs.ip` the real return address).
fn run_returns(site: &Site, regs: &mut PtRegs) {
    match admit_at(regs) {
        Admission::Ignore => {}
        Admission::Miss => miss_all(list(&site.ret)),
        Admission::Run(level, before) => {
            // An override asked for at a return means nothing: the function has run.
            let _ = run_list(list(&site.ret), regs, level);
            leave(before);
        }
    }
}

/// A return stub of one call site of a function that returns twice: where to go, and whose
/// return probes run (both 0 while unclaimed; `real` is claimed first, then `site` is set).
struct OwnReturn {
    real: AtomicU64,
    site: AtomicU64,
}

/// How many call sites of functions that return twice get their own return stub (past that,
/// their returns are misses).
const OWN_RETURNS: usize = 64;

/// See [`own_return_stubs`].
static OWN_STUBS: OnceLock<Option<[u64; OWN_RETURNS]>> = OnceLock::new();

static OWN_RETURN: [OwnReturn; OWN_RETURNS] = [const { OwnReturn { real: AtomicU64::new(0), site: AtomicU64::new(0) } }; OWN_RETURNS];

/// The own return stubs (stub `k` returns through `OWN_RETURN[k]`), built at the first return
/// probe on a function that returns twice, so that no hit builds code.
fn own_return_stubs() -> Option<&'static [u64; OWN_RETURNS]> {
    OWN_STUBS
        .get_or_init(|| {
            const STRIDE: usize = 2048;
            let at = patch::alloc_near(own_return_dispatch as *const () as u64, OWN_RETURNS * STRIDE)?;
            let mut stubs = [0u64; OWN_RETURNS];
            for (k, stub) in stubs.iter_mut().enumerate() {
                *stub = at + (k * STRIDE) as u64;
                let (code, window_end) = (|| -> Result<(Vec<u8>, u64), IcedError> {
                    let mut a = CodeAssembler::new(64)?;
                    let mut window = a.create_label();
                    let record = &OWN_RETURN[k] as *const OwnReturn as u64;
                    emit_probe_call(
                        &mut a,
                        PointKind::Return,
                        HitStack::for_hits(),
                        VectorSave::everything(),
                        None,
                        Some(record),
                        own_return_dispatch as *const () as u64,
                        Some(&mut window),
                    )?;
                    a.jmp(qword_ptr(rsp - 8))?;
                    let r = a.assemble_options(*stub, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
                    let end = r.label_ip(&window)?;
                    Ok((r.inner.code_buffer, end))
                })()
                .ok()
                .filter(|(c, _)| c.len() <= STRIDE)?;
                register_entry_window(*stub, window_end);
                // SAFETY: `at` is a fresh read-write mapping of OWN_RETURNS * STRIDE bytes and
                // each stub fits in its stride (checked).
                unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), *stub as *mut u8, code.len()) };
            }
            patch::make_executable(at, OWN_RETURNS * STRIDE).ok()?;
            Some(stubs)
        })
        .as_ref()
}

/// Replaces the return address at `entry_sp` (a function's first instruction) with the own
/// return stub of that call site, claiming one for it at its first call. False when there is
/// none to claim.
fn return_through_own_stub(site: &Site, entry_sp: u64) -> bool {
    let Some(stubs) = own_return_stubs() else { return false };
    let slot = entry_sp as *mut u64;
    // SAFETY: at a function's first instruction [sp] is its return address, on this thread's
    // stack.
    let real = unsafe { slot.read() };
    let me = site as *const Site as u64;
    for (k, own) in OWN_RETURN.iter().enumerate() {
        let mut claimed = own.real.load(Ordering::Acquire);
        if claimed == 0 {
            claimed = match own.real.compare_exchange(0, real, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    own.site.store(me, Ordering::Release);
                    real
                }
                Err(other) => other,
            };
        }
        if claimed == real && own.site.load(Ordering::Acquire) == me {
            // SAFETY: as above; the function returns to the stub, which sends it to `real`.
            unsafe { slot.write(stubs[k]) };
            return true;
        }
    }
    false
}

/// Called by an own return stub: `own`'s real return address into `regs.ip`, then the return
/// probes, at every return through it.
extern "C" fn own_return_dispatch(own: &OwnReturn, regs: &mut PtRegs) {
    regs.ip = own.real.load(Ordering::Acquire);
    let site = own.site.load(Ordering::Acquire) as *const Site;
    // SAFETY: a stub is written over a return address only once its record names its site;
    // sites are leaked and never freed.
    run_returns(unsafe { &*site }, regs);
}

/// A function made to return at its entry (`bpf_override_return`): its patched `ret`s will not
/// run, so its return probes run here, as they would at the return (`regs.ax` the value).
fn returned_at_entry(site: &Site, regs: &PtRegs) {
    if site.returns_patched() && !list(&site.ret).is_empty() {
        // At a function's first instruction, as at its `ret`, [sp] is the return address.
        return_site_dispatch(site, &mut regs.clone());
    }
}

/// Called by a return site's stub at the function's `ret`: the registers as the function
/// returns (`ip` the return address, `sp` past it, as the kernel's uretprobes show them).
extern "C" fn return_site_dispatch(site: &Site, regs: &mut PtRegs) {
    // SAFETY: at a `ret`, [sp] is the return address, on this thread's stack.
    regs.ip = unsafe { (regs.sp as *const u64).read() };
    regs.sp += 8;
    match admit_at(regs) {
        Admission::Ignore => {}
        Admission::Miss => miss_all(list(&site.ret)),
        Admission::Run(level, before) if before.warm => {
            let _ = run_list(list(&site.ret), regs, level);
            leave(before);
        }
        Admission::Run(level, before) => {
            first_hit(before, || {
                let _ = run_list(list(&site.ret), regs, level);
            });
        }
    }
}

/// Runs the work of the thread's first admitted hit and restores the thread's state (later
/// hits run theirs inline, then `leave`). The first hit runs with async signals deferred: its
/// handlers set up per-thread state (the shadow stack too), which a signal handler probing
/// meanwhile must not find half made. It also makes the thread's handler stack, which later
/// hits run on.
#[cold]
#[inline(never)]
fn first_hit<R>(before: ThreadState, run: impl FnOnce() -> R) -> R {
    register_handler_stack();
    let r = crate::signals::with_signals_deferred(run);
    // One mapped meanwhile (by a stub in our own work, whose `warm` the flow then kept).
    register_handler_stack();
    leave(ThreadState { warm: true, ..before });
    r
}

/// Bytes of a thread's handler stack (reserved, not committed: a hit touches a few kilobytes),
/// below which one guard page lies.
const HANDLER_STACK: usize = 256 << 10;

/// The value of a thread's `stack_top` once it has no handler stack and will have none (it
/// could not be mapped): hits stay on its own stack.
const NO_HANDLER_STACK: u64 = 1;

/// Has the thread's handler stack, which a stub mapped, released at its exit (see
/// [`emit_handler_stack_maker`], which makes the thread's next admitted probe hit a first hit
/// again, which calls this; system call dispatch calls it too).
pub(crate) fn register_handler_stack() {
    let t = thread();
    if t.stack_registered.get() != 0 || t.stack_top.get() <= NO_HANDLER_STACK {
        return;
    }
    let Some(HandlerStacks { key, .. }) = HANDLER_STACKS.get().copied().flatten() else { return };
    let base = t.stack_top.get() - (HANDLER_STACK + PAGE) as u64;
    // SAFETY: setting this thread's value of our key (pthread_setspecific(3)); a key in the
    // thread's first-level block (checked when it was made), so nothing is allocated.
    if unsafe { libc::pthread_setspecific(key, base as *const libc::c_void) } == 0 {
        t.stack_registered.set(1);
    }
    unmap_dead_threads_stacks();
}

/// Runs `f` on this thread's handler stack (mapping it if the thread has none yet) with the
/// stack pointer it left (`Some`: see [`back_on`]), or where it is (`None`) if the handler
/// stack is in use or cannot be had. For work in a signal handler, which may run on a small
/// signal stack (a goroutine's 32 KiB, a Rust thread's 8 KiB), while asynchronous signals are
/// blocked: one landing while `rsp` is off the signal stack would be delivered over the
/// handler's frame.
pub(crate) fn on_handler_stack<R>(f: impl FnOnce(Option<u64>) -> R) -> R {
    let t = thread();
    if t.stack_in_use.get() != 0 {
        return f(None);
    }
    let mut top = t.stack_top.get();
    if top == 0 {
        top = map_handler_stack();
    }
    if top <= NO_HANDLER_STACK {
        return f(None);
    }
    register_handler_stack();
    // Signals the interrupted code deferred are its own to release (this may run in a signal
    // handler that landed in a stub's way out): only those deferred by the work here are.
    let outer = t.deferred.replace(0);
    t.stack_in_use.set(1);
    // The frame slot `in_signal_handler` reads, written as the stubs write it, before the
    // stack pointer gets there.
    let r = on_stack_leaving(top - 16, top - 8, |left| f(Some(left)));
    t.stack_in_use.set(0);
    // Off the stack: what waited for its work to end (see `release_deferred`) runs now.
    if !t.state.get().busy {
        release_deferred(t);
    }
    t.deferred.set(t.deferred.get() | outer);
    r
}

/// Runs `f` back on the stack [`on_handler_stack`] left (`left`), below everything live there,
/// or where it is (`None`).
pub(crate) fn back_on<R>(left: Option<u64>, f: impl FnOnce() -> R) -> R {
    match left {
        Some(left_sp) => on_stack_leaving((left_sp - 128) & !15, 0, |_| f()),
        None => f(),
    }
}

/// Maps this thread's handler stack outside a stub (the stubs' routine, called from here).
fn map_handler_stack() -> u64 {
    let Some(HandlerStacks { maker, .. }) = HANDLER_STACKS.get().copied().flatten() else { return NO_HANDLER_STACK };
    let top: u64;
    // SAFETY: the routine `emit_handler_stack_maker` emitted: called with r12 zero, it gives r12
    // back zero, returns in rax and changes only the caller-saved registers declared here.
    unsafe {
        std::arch::asm!(
            "call {maker}",
            maker = in(reg) maker,
            inout("r12") 0u64 => _,
            out("rax") top,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("rdi") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    top
}

/// What threads need to have handler stacks, made when the first probe is attached (a hit
/// must not be the first to make them).
#[derive(Clone, Copy)]
pub(crate) struct HandlerStacks {
    /// The pthread key whose destructor releases a thread's handler stack. Only a key that
    /// glibc keeps in the thread's own block (the first 32, `PTHREAD_KEY_2NDLEVEL_SIZE`) is
    /// used: setting a later one may allocate, and a first hit can come with the allocator's
    /// lock held (a probe on `mmap` or `brk`, called from inside `malloc`).
    key: libc::pthread_key_t,
    /// The routine that maps a thread's handler stack (see [`emit_handler_stack_maker`]).
    maker: u64,
}

static HANDLER_STACKS: OnceLock<Option<HandlerStacks>> = OnceLock::new();

/// Makes [`HANDLER_STACKS`] (once); None where threads cannot have handler stacks.
pub(crate) fn handler_stacks() -> Option<HandlerStacks> {
    *HANDLER_STACKS.get_or_init(|| {
        let page = patch::alloc_near(release_handler_stack as *const () as u64, PAGE)?;
        let code = (|| -> Result<Vec<u8>, IcedError> {
            let mut a = CodeAssembler::new(64)?;
            emit_handler_stack_maker(&mut a)?;
            a.assemble(page)
        })()
        .ok()
        .filter(|c| c.len() <= PAGE)?;
        // SAFETY: `page` is a fresh read-write mapping of PAGE bytes; the code fits (checked).
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
        patch::make_executable(page, PAGE).ok()?;
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: pthread_key_create(3) with a destructor that takes the value we set.
        if unsafe { libc::pthread_key_create(&mut key, Some(release_handler_stack)) } != 0 {
            return None;
        }
        if key >= 32 {
            // SAFETY: the key just made, known to nobody else.
            unsafe { libc::pthread_key_delete(key) };
            return None;
        }
        Some(HandlerStacks { key, maker: page })
    })
}

/// The destructor of [`HandlerStacks::key`]: the exiting thread's handler stack (at `base`)
/// is unmapped once the thread is gone, by a thread that maps or lets go of one later (the
/// thread's last system calls, after the destructors, still run their handlers on it).
unsafe extern "C" fn release_handler_stack(base: *mut libc::c_void) {
    let t = thread();
    let before = t.state.get();
    set_state(t, ThreadState { busy: true, ..before });
    // SAFETY: gettid(2) cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
    let entry = (base as u64 >> 12) << TID_BITS | (tid & TID_MASK);
    let _ = DYING_STACKS.iter().find(|d| d.compare_exchange(0, entry, Ordering::AcqRel, Ordering::Relaxed).is_ok());
    unmap_dead_threads_stacks();
    // The shadow stack goes too, if no return probe's frame is in it (a probed function still
    // on the stack, such as one that runs the destructors, would return through it).
    let shadow = t.shadow.get();
    // SAFETY: this thread's shadow stack (from `shadow`), which only this thread touches.
    if !shadow.is_null() && unsafe { (*shadow).len } == 0 {
        t.shadow.set(std::ptr::null_mut());
        // SAFETY: allocated by `shadow` with this layout, no longer reachable.
        unsafe { std::alloc::dealloc(shadow as *mut u8, std::alloc::Layout::new::<ShadowStack>()) };
    }
    leave(before);
}

/// Bits of a thread id in a [`DYING_STACKS`] entry (pid_max is at most 2^22).
const TID_BITS: u32 = 22;
const TID_MASK: u64 = (1 << TID_BITS) - 1;

/// Handler stacks waiting for their threads to be gone, each its page number above the
/// thread's id in one word, claimed and taken with one compare-and-swap (0: free); more are
/// never unmapped.
static DYING_STACKS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Unmaps the handler stacks whose threads are gone (tkill(2) with signal 0: ESRCH; not
/// tgkill with our pid, which a vfork child's differs from).
fn unmap_dead_threads_stacks() {
    for d in &DYING_STACKS {
        let entry = d.load(Ordering::Acquire);
        if entry == 0 {
            continue;
        }
        let (base, tid) = ((entry >> TID_BITS) << 12, entry & TID_MASK);
        // Raw calls, not libc's: a site of libc's rewritten for system call interception would
        // take them for the application's where the thread is not marked busy (a SIGSYS
        // handler's first work). SAFETY: tkill(2) with signal 0 only checks that the thread
        // exists.
        let gone = unsafe { crate::syscalls::raw_syscall(libc::SYS_tkill as u64, [tid, 0, 0, 0, 0, 0]) } == -(libc::ESRCH as i64) as u64;
        if gone && d.compare_exchange(entry, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // SAFETY: munmap(2) of the handler stack `emit_handler_stack_maker` mapped for a
            // thread that no longer exists, taken out of the list by this call alone.
            unsafe { crate::syscalls::raw_syscall(libc::SYS_munmap as u64, [base, (HANDLER_STACK + PAGE) as u64, 0, 0, 0, 0]) };
        }
    }
}

/// Where a thread's handler stack top, its in-use byte and its system call selector are kept,
/// as offsets from the thread pointer (`%fs` base), the same for every thread (initial-exec
/// TLS): the stubs reach them with one instruction each.
struct ThreadSlots {
    entering: u64,
    /// The `busy` byte of the thread's state.
    busy: u64,
    deferred: u64,
    stack_top: u64,
    stack_in_use: u64,
    warm: u64,
    selector: u64,
    /// The signal stack's base and size (`stack_t`'s `ss_sp` and `ss_size`).
    alt_sp: u64,
    alt_size: u64,
}

fn thread_slots() -> ThreadSlots {
    let fs_base: u64;
    // SAFETY: reads the thread pointer, which `%fs:0` holds (x86-64 psABI).
    unsafe { std::arch::asm!("mov {b}, qword ptr fs:[0]", b = out(reg) fs_base, options(nostack, readonly)) };
    let t = thread();
    let slot = |p: u64| p.wrapping_sub(fs_base);
    ThreadSlots {
        entering: slot(t.entering.as_ptr() as u64),
        busy: slot(t.state.as_ptr() as u64 + std::mem::offset_of!(ThreadState, busy) as u64),
        deferred: slot(t.deferred.as_ptr() as u64),
        stack_top: slot(t.stack_top.as_ptr() as u64),
        stack_in_use: slot(t.stack_in_use.as_ptr() as u64),
        warm: slot(t.state.as_ptr() as u64 + std::mem::offset_of!(ThreadState, warm) as u64),
        selector: slot(t.selector.as_ptr() as u64),
        alt_sp: slot(t.alt_stack.as_ptr() as u64),
        alt_size: slot(t.alt_stack.as_ptr() as u64 + 16),
    }
}

/// Emits a stub's move onto the thread's handler stack, unless something below uses it (a stub
/// or a signal handler this hit interrupted: whoever runs there sets the in-use byte first and
/// puts it back after leaving) or the thread has none. The stub's frame (`rbx`) is kept in the
/// top 16 bytes (see [`in_signal_handler`]). `r12` keeps the in-use byte as found
/// (0 or 1): the stub's way out writes 0 back if it found 0, and leaves a stack in use alone. The caller-saved registers are in the frame already; the
/// flags are not live (or saved, mid-function). A thread's first hit maps its stack by calling
/// [`HandlerStacks::maker`] (8 bytes more of the application's stack, once).
fn emit_handler_stack_switch(a: &mut CodeAssembler, maker: u64) -> Result<(), IcedError> {
    let slots = thread_slots();
    let mut stay = a.create_label();
    let mut switch = a.create_label();
    a.movzx(r12d, byte_ptr(slots.stack_in_use).fs())?;
    a.test(r12d, r12d)?;
    a.jne(stay)?;
    a.mov(rax, qword_ptr(slots.stack_top).fs())?;
    a.cmp(rax, NO_HANDLER_STACK as i32)?;
    a.ja(switch)?;
    a.je(stay)?;
    a.mov(rax, maker)?;
    a.call(rax)?;
    a.cmp(rax, NO_HANDLER_STACK as i32)?;
    a.je(stay)?;
    a.set_label(&mut switch)?;
    // Not off a signal stack (see `HookThread::alt_stack`): `rbx` is the frame, on the stack
    // the hit came on.
    a.mov(rcx, rbx)?;
    a.sub(rcx, qword_ptr(slots.alt_sp).fs())?;
    a.cmp(rcx, qword_ptr(slots.alt_size).fs())?;
    a.jb(stay)?;
    // Taken, then the frame's address at the top, for a signal handler that lands on this
    // stack (see `in_signal_handler`), before rsp gets there.
    a.mov(byte_ptr(slots.stack_in_use).fs(), 1)?;
    a.mov(qword_ptr(rax - 8), rbx)?;
    a.lea(rsp, ptr(rax - 16))?;
    a.set_label(&mut stay)?;
    Ok(())
}

/// Emits the routine a thread's first hit calls to map its handler stack: `mmap(NULL, size,
/// PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0)`,
/// then `mprotect(base, PAGE, PROT_NONE)` for the guard page, by raw system calls (no function
/// call: the stub has not saved the vector registers yet, and a goroutine's stack has no room
/// for one), with the thread's selector at ALLOW meanwhile so that system call interception
/// does not take them for the application's. Stores and returns the stack's top in `rax`, or
/// [`NO_HANDLER_STACK`]. Called with `r12` zero, which it uses and gives back zero; changes
/// only caller-saved registers. [`register_handler_stack`] has the stack released at the
/// thread's exit.
fn emit_handler_stack_maker(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let slots = thread_slots();
    a.movzx(r12d, byte_ptr(slots.selector).fs())?;
    a.mov(byte_ptr(slots.selector).fs(), 0)?;
    a.mov(eax, libc::SYS_mmap as u32)?;
    a.xor(edi, edi)?;
    a.mov(esi, (HANDLER_STACK + PAGE) as u32)?;
    a.mov(edx, (libc::PROT_READ | libc::PROT_WRITE) as u32)?;
    a.mov(r10d, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK) as u32)?;
    a.mov(r8, -1i64)?;
    a.xor(r9d, r9d)?;
    a.syscall()?;
    let mut mapped = a.create_label();
    let mut done = a.create_label();
    a.cmp(rax, -4095i32)?;
    a.jb(mapped)?;
    a.mov(eax, NO_HANDLER_STACK as u32)?;
    a.jmp(done)?;
    a.set_label(&mut mapped)?;
    a.mov(rdi, rax)?;
    a.mov(eax, libc::SYS_mprotect as u32)?;
    a.mov(esi, PAGE as u32)?;
    a.xor(edx, edx)?;
    a.syscall()?;
    // The thread's signal stack, `sigaltstack(NULL, &alt_stack)`.
    a.mov(r8, rdi)?;
    a.xor(edi, edi)?;
    a.mov(rsi, qword_ptr(0).fs())?;
    a.add(rsi, slots.alt_sp as i32)?;
    a.mov(eax, libc::SYS_sigaltstack as u32)?;
    a.syscall()?;
    a.lea(rax, ptr(r8 + (HANDLER_STACK + PAGE) as i32))?;
    // The next admitted hit is a first hit again: it registers the stack.
    a.mov(byte_ptr(slots.warm).fs(), 0)?;
    a.set_label(&mut done)?;
    a.mov(qword_ptr(slots.stack_top).fs(), rax)?;
    a.mov(byte_ptr(slots.selector).fs(), r12b)?;
    a.xor(r12d, r12d)?;
    a.ret()?;
    Ok(())
}

impl Site {
    /// Whether the function's returns are patched (return probes run there, not through the
    /// replaced return address).
    fn returns_patched(&self) -> bool {
        self.returns.get().is_some_and(|r| !r.is_empty())
    }
}

/// The instructions to cover at each `ret` of the function of `site` (`size` bytes, then
/// `padding` bytes nobody executes), or None when its returns cannot all be patched safely:
/// an indirect jump or a jump leaving the function (a tail call returns from elsewhere), a call
/// into its middle, or a `ret` with no room for a jump (straight-line instructions before it,
/// none of them a branch target but the first, after the entry's 5 bytes; or the padding
/// after it, when it is the last instruction).
fn plan_returns(site: &Site, size: u64, padding: u64) -> Option<Vec<Vec<Instruction>>> {
    let addr = site.addr;
    if size == 0 || size > 1 << 20 {
        return None;
    }
    // Jumps from outside the function (a `.cold` part) must not land inside a window.
    let module = site.module.as_ref()?;
    let end = addr + size;
    let body = original_body(addr, size, &site.original[..site.method.len()])?;
    let mut dec = Decoder::with_ip(64, &body, addr, DecoderOptions::NONE);
    let mut instrs = vec![];
    let mut targets = std::collections::HashSet::new();
    while dec.can_decode() {
        let i = dec.decode();
        if i.is_invalid() {
            return None;
        }
        match i.flow_control() {
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                let t = i.near_branch_target();
                if t < addr || t >= end {
                    return None;
                }
                targets.insert(t);
            }
            FlowControl::Call => {
                let t = i.near_branch_target();
                if t > addr && t < end {
                    return None;
                }
            }
            FlowControl::IndirectBranch | FlowControl::XbeginXabortXend => return None,
            _ => {}
        }
        instrs.push(i);
    }
    // Other probes' patches inside the body hide its instructions (and would overlap ours).
    let entry_len = site.method.len() as u64;
    let body_free = size > entry_len + 1 && !patch::overlaps(addr + entry_len, size - entry_len);
    let mut windows = vec![];
    for (k, r) in instrs.iter().enumerate() {
        if r.flow_control() != FlowControl::Return {
            continue;
        }
        if let Some((ret, nop)) = site.trampoline_ret.filter(|t| t.0 == r.ip()) {
            // The trampoline runs this `ret`: its window is the nop and the copy there.
            let code = patch::read_code(nop, PATCH_LEN + 1).ok()?;
            let mut dec = Decoder::with_ip(64, &code, nop, DecoderOptions::NONE);
            let window = vec![dec.decode(), dec.decode()];
            debug_assert!(window[1].mnemonic() == Mnemonic::Ret, "{ret:#x}: the trampoline ends with its ret");
            windows.push(window);
            continue;
        }
        if !body_free {
            return None;
        }
        // A near `ret` without an immediate is what compilers emit; the others (`ret imm16`,
        // far returns) would need their own register view.
        if r.mnemonic() != Mnemonic::Ret || r.op_count() != 0 {
            return None;
        }
        let fits_padding = r.ip() + r.len() as u64 == end && r.len() as u64 + padding >= PATCH_LEN as u64 && r.ip() >= addr + PATCH_LEN as u64;
        // The padding may already hold a rewritten system call site's jump.
        if fits_padding
            && !patch::overlaps(r.ip(), PATCH_LEN as u64)
            && !crate::syscalls::overlaps_pads(r.ip(), PATCH_LEN as u64)
            && !module.jumped_into_from_outside(r.ip() + 1, r.ip() + PATCH_LEN as u64)
        {
            windows.push(vec![*r]);
            continue;
        }
        let (mut start, mut len) = (k, r.len());
        while len < PATCH_LEN {
            if start == 0 || targets.contains(&instrs[start].ip()) || instrs[start - 1].flow_control() != FlowControl::Next {
                return None;
            }
            start -= 1;
            len += instrs[start].len();
        }
        if instrs[start].ip() < addr + PATCH_LEN as u64 || module.jumped_into_from_outside(instrs[start].ip() + 1, r.ip() + 1) {
            return None;
        }
        windows.push(instrs[start..=k].to_vec());
    }
    (!windows.is_empty()).then_some(windows)
}

/// Builds (not installs) the patch of one return window of `func`.
fn build_return_site(func: &'static Site, window: &[Instruction]) -> Result<&'static ReturnSite, AttachError> {
    let addr = window[0].ip();
    let unpatchable = |reason: String| AttachError::Unpatchable { addr, reason };
    let page = patch::alloc_near(addr, PAGE).ok_or(AttachError::NoNearMemory(addr))?;
    let (ret, before) = window.split_last().expect("a window ends with its ret");
    let assembled = (|| -> Result<(Vec<u8>, Vec<u64>, u64), IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut labels = vec![];
        for i in before {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.add_instruction(*i)?;
            labels.push(l);
        }
        let mut probe = a.create_label();
        let mut window = a.create_label();
        a.set_label(&mut probe)?;
        emit_probe_call(
            &mut a,
            PointKind::Return,
            HitStack::for_hits(),
            VectorSave::at(PointKind::Return, func.needs, func.named),
            None,
            Some(func as *const Site as u64),
            return_site_dispatch as *const () as u64,
            Some(&mut window),
        )?;
        a.add_instruction(*ret)?;
        labels.push(probe);
        let r = a.assemble_options(page, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let at = labels.iter().map(|l| r.label_ip(l)).collect::<Result<Vec<_>, _>>()?;
        let window_end = r.label_ip(&window)?;
        Ok((r.inner.code_buffer, at, window_end))
    })()
    .map_err(|e| unpatchable(format!("assembling the return stub: {e}")))?;
    let (code, at, window_end) = assembled;
    if code.len() > PAGE {
        return Err(unpatchable("return stub too large".into()));
    }
    // SAFETY: `page` is a fresh read-write mapping of PAGE bytes; the code fits (checked).
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
    patch::make_executable(page, PAGE).map_err(|e| AttachError::Io { addr, source: e })?;
    // The window from the probe on (before it, the function's own instructions run).
    register_entry_window(*at.last().expect("the probe's label"), window_end);
    // Threads stopped inside the patched bytes go on at the same instruction in the stub (one
    // stopped at the `ret` runs the probes first).
    let mut map = vec![];
    for (i, new) in window.iter().zip(&at) {
        let off = i.ip() - addr;
        if off > 0 && off < PATCH_LEN as u64 {
            map.push((off as u32, (new - page) as u32));
        }
    }
    let slot = patch::register_site(addr, PATCH_LEN as u32, page, &map, 0).ok_or(AttachError::TooManySites)?;
    let rel = i32::try_from(page.wrapping_sub(addr + PATCH_LEN as u64) as i64).map_err(|_| AttachError::NoNearMemory(addr))?;
    let mut jump = [0xe9, 0, 0, 0, 0];
    jump[1..].copy_from_slice(&rel.to_le_bytes());
    let original: [u8; PATCH_LEN] = patch::read_code(addr, PATCH_LEN).map_err(|e| unpatchable(e.to_string()))?.try_into().expect("5 bytes");
    Ok(Box::leak(Box::new(ReturnSite { addr, original, jump, slot, installed: AtomicBool::new(false) })))
}

/// Whether return probes patch functions' `ret`s where they can (see [`set_return_patching`]).
static PATCH_RETURNS: AtomicBool = AtomicBool::new(true);

static USE_HANDLER_STACKS: AtomicBool = AtomicBool::new(true);

/// Whether stubs made from now on run hits on the thread's handler stack (`true`, the default).
/// A hit in a signal handler stays on the handler's stack: the agent's wrapper around the
/// handlers the application installs says so (see [`in_signal_handler`]), and a hit on the
/// thread's signal stack stays there in any case (see `HookThread::alt_stack`), for the
/// handlers of a process the agent was loaded into after they were installed.
pub fn set_handler_stacks(on: bool) {
    USE_HANDLER_STACKS.store(on, Ordering::Relaxed);
}

/// Return probes attached from now on patch the function's `ret`s where they can (`true`, the
/// default) or always replace the return address at entry (`false`: to compare the two, and
/// to test the shadow stack's path).
pub fn set_return_patching(on: bool) {
    PATCH_RETURNS.store(on, Ordering::Relaxed);
}

/// The return sites of function site `site`, planned and built at its first return probe.
fn return_sites(site: &'static Site, info: SiteInfo) -> &'static [&'static ReturnSite] {
    site.returns.get_or_init(|| {
        if !site.at_entry || !PATCH_RETURNS.load(Ordering::Relaxed) {
            return vec![];
        }
        let Some(windows) = plan_returns(site, info.function_size, info.padding) else { return vec![] };
        let mut built = vec![];
        for w in &windows {
            match build_return_site(site, w) {
                Ok(r) => built.push(r),
                Err(_) => {
                    // All or none: the function's other returns would go unseen. The windows
                    // built so far were never installed; their slots are given back.
                    for r in built {
                        patch::release_site(r.slot);
                    }
                    return vec![];
                }
            }
        }
        built
    })
}

/// Installs or removes the patches of `site` (and of its return sites) as its handlers need.
fn sync_patches(site: &'static Site) -> Result<(), AttachError> {
    let returns = site.returns.get().map(Vec::as_slice).unwrap_or(&[]);
    let want_returns = !list(&site.ret).is_empty();
    for r in returns {
        if r.installed.load(Ordering::Acquire) != want_returns {
            let bytes = if want_returns { &r.jump } else { &r.original };
            patch::install(r.slot, r.addr, bytes).map_err(|e| AttachError::Io { addr: r.addr, source: e })?;
            r.installed.store(want_returns, Ordering::Release);
        }
    }
    // A foreign `int3` over our jump, not yet seen by the link thread: given back first, so
    // that no write of ours races a thread the kernel resumes inside the jump.
    if patched_with_a_jump(site) {
        let mut now = [0u8; PATCH_LEN];
        if patch::read_memory(site.addr, &mut now).is_ok() && covers_our_jump(site, now) && !traced() {
            yield_site(site);
        }
    }
    // A site given back to a foreign breakpoint is patched again only by probes attached after
    // its last one went.
    if list(&site.entry).is_empty() && !want_returns {
        site.yielded.store(false, Ordering::Release);
    }
    let want = if site.yielded.load(Ordering::Acquire) {
        Installed::Original
    } else if !list(&site.entry).is_empty() || (want_returns && returns.is_empty()) {
        Installed::Stub
    } else if want_returns && site.trampoline_ret.is_some() {
        // The return site is in the trampoline: calls must go through it.
        Installed::Trampoline
    } else {
        Installed::Original
    };
    if site.installed.load(Ordering::Acquire) != want as u8 {
        let bytes = match want {
            Installed::Stub => &site.jump[..site.method.len()],
            Installed::Trampoline => &site.to_trampoline[..],
            Installed::Original => &site.original[..site.method.len()],
        };
        patch::install(site.slot, site.addr, bytes).map_err(|e| AttachError::Io { addr: site.addr, source: e })?;
        site.installed.store(want as u8, Ordering::Release);
    }
    Ok(())
}

/// What the code at a probe point may still need, which decides what a stub must preserve
/// besides the general registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PointKind {
    /// A function's first instruction. By the System V x86-64 ABI the flags are dead, the
    /// direction flag is clear and the 128 bytes below `rsp` are free. Registers are kept all
    /// the same: a caller built with `-fipa-ra` relies on those its callee does not touch.
    FunctionEntry,
    /// At a function's `ret` or just after it (the return stub): as at entry.
    Return,
    /// Anywhere else: everything is live, including the flags, the red zone and all vector
    /// registers.
    MidFunction,
}

impl PointKind {
    /// Bytes below `rsp` to step over before pushing: the red zone where it may be in use.
    fn red_zone(self) -> i32 {
        if self == PointKind::MidFunction {
            128
        } else {
            0
        }
    }
}

/// Which stack a stub runs its call on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HitStack {
    /// The thread's handler stack where it has one and nobody uses it (see
    /// [`emit_handler_stack_switch`]): probe hits.
    Agent,
    /// The application's: system call sites, whose dispatcher makes the call itself (a call
    /// that blocks, and the signal handlers it meets, belong on the application's stack).
    Application,
}

impl HitStack {
    /// Where probe hits run: on the handler stack, if threads can have one released at their
    /// exit (see [`handler_stacks`], made before the first stub).
    fn for_hits() -> HitStack {
        if USE_HANDLER_STACKS.load(Ordering::Relaxed) && HANDLER_STACKS.get().copied().flatten().is_some() {
            HitStack::Agent
        } else {
            HitStack::Application
        }
    }
}

/// Which registers a stub at a function's entry or return keeps besides the general ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// Every vector register and mask: callers may keep values in registers the function does
    /// not touch (GCC's `-fipa-ra`), or we cannot tell.
    All,
    /// The ABI's vector argument (entry) or result (return) registers: the function calls code
    /// its compiler could not see (an indirect call, a PLT stub), so its callers assume every
    /// call-clobbered register is clobbered.
    Abi,
}

/// What a function's body tells about the registers its probes must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BodyNeeds {
    /// What its callers rely on.
    callers: Kept,
    /// The ABI's vector argument registers (bit i: xmm i) whose values at entry may still be
    /// read: by the body, by code it calls or jumps to, or, for xmm0-1, by its caller as
    /// results (a function that names none returns what it was given).
    arguments: u8,
    /// The vector registers 0-15 whose low 128 bits other conventions than System V's may keep
    /// values in (see `ModuleCode::kept_by_other_conventions`; all, for an unknown module).
    low_halves: u16,
}

impl BodyNeeds {
    /// What is assumed of a body that cannot be decoded.
    const UNKNOWN: BodyNeeds = BodyNeeds { callers: Kept::All, arguments: 0xff, low_halves: 0xffff };
}

/// What the function at `addr` (`size` bytes, `first` its original first bytes, in `module`)
/// needs kept at its entry and returns.
fn body_needs(addr: u64, size: u64, first: &[u8], module: Option<&ModuleCode>) -> BodyNeeds {
    // Unknown size, or other patches inside the body (their bytes would decode as anything):
    // keep everything.
    let skip = first.len() as u64;
    if size == 0 || size > 1 << 20 || size <= skip || patch::overlaps(addr + skip, size - skip) {
        return BodyNeeds::UNKNOWN;
    }
    let Some(body) = original_body(addr, size, first) else { return BodyNeeds::UNKNOWN };
    let mut dec = Decoder::with_ip(64, &body, addr, DecoderOptions::NONE);
    let mut callers = Kept::All;
    // Whether control may leave the body other than by returning (arguments read elsewhere).
    let mut leaves = false;
    let mut named = VectorUse::NONE;
    let mut info = iced_x86::InstructionInfoFactory::new();
    let inside = |t: u64| t >= addr && t < addr + size;
    let mut previous = Instruction::default();
    let mut arguments_in = ArgumentRegisters::default();
    while dec.can_decode() {
        let i = dec.decode();
        arguments_in.add(&i, &mut info);
        match i.flow_control() {
            // A TLS descriptor call (`lea rax, [rip + x@TLSDESC]; call [rax]`): its callee
            // keeps every register but rax, and GCC's callers know it.
            FlowControl::IndirectCall if is_tls_descriptor_call(&previous, &i) => leaves = true,
            FlowControl::IndirectCall => (callers, leaves) = (Kept::Abi, true),
            FlowControl::Call if is_plt_stub(i.near_branch_target()) => (callers, leaves) = (Kept::Abi, true),
            FlowControl::Call | FlowControl::IndirectBranch | FlowControl::Exception | FlowControl::Interrupt => leaves = true,
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch if !inside(i.near_branch_target()) => leaves = true,
            _ if i.is_invalid() => leaves = true,
            _ => {}
        }
        named.add_instruction(&i, &mut info);
        previous = i;
    }
    // Entered by a jump (a `.cold` part, a second entry), its code may go on with another
    // function's live registers: not only what the convention keeps (and its rdi and rsi are
    // that function's, whatever its convention).
    let entered_by_jump = module.is_none_or(|m| m.entered_by_jump(addr));
    if entered_by_jump {
        callers = Kept::All;
    }
    let arguments = if leaves { 0xff } else { 0b11 | named.regs as u8 };
    // A function that may follow Win64's convention keeps xmm6-15 for its callers, wherever
    // they are; one that takes its arguments in rdi or rsi follows System V's.
    let win64 = if arguments_in.system_v && !entered_by_jump { 0 } else { 0xffc0 };
    BodyNeeds { callers, arguments, low_halves: win64 | module.map_or(0xffff, ModuleCode::kept_by_other_conventions) }
}

/// Whether a function's first block (its instructions up to the first branch, call or return)
/// reads rdi or rsi before writing or saving it (a push, a store): System V passes its first
/// arguments there; in Win64's convention they belong to the caller, and a function saves them
/// before using them. (Past the first block, code laid out later may run first: a save in a
/// shrink-wrapped block after a use laid out before it.)
#[derive(Default)]
struct ArgumentRegisters {
    /// rdi or rsi was read as an argument.
    system_v: bool,
    /// Bit 0: rdi written, bit 1: rsi.
    written: u8,
    /// The first block has ended.
    ended: bool,
}

impl ArgumentRegisters {
    fn add(&mut self, i: &Instruction, info: &mut iced_x86::InstructionInfoFactory) {
        use iced_x86::{OpAccess, Register};
        if self.system_v || self.ended || self.written == 0b11 {
            return;
        }
        self.ended = i.flow_control() != FlowControl::Next;
        let saves = i.mnemonic() == Mnemonic::Push || (i.mnemonic() == Mnemonic::Mov && i.op0_kind() == iced_x86::OpKind::Memory);
        let mut written = 0;
        for used in info.info(i).used_registers() {
            let bit = match used.register().full_register() {
                Register::RDI => 1,
                Register::RSI => 2,
                _ => continue,
            };
            // (Once saved, the register is the function's to use: reads after say nothing.)
            match used.access() {
                OpAccess::Read | OpAccess::CondRead if saves => written |= bit,
                OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite if self.written & bit == 0 => {
                    self.system_v = true;
                }
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite => written |= bit,
                _ => {}
            }
        }
        self.written |= written;
    }
}

/// Whether `call` (after `previous`) is a TLS descriptor call: `lea rax, [rip + d]` then
/// `call qword ptr [rax]`.
fn is_tls_descriptor_call(previous: &Instruction, call: &Instruction) -> bool {
    use iced_x86::{OpKind, Register};
    previous.mnemonic() == Mnemonic::Lea
        && previous.op0_register() == Register::RAX
        && previous.is_ip_rel_memory_operand()
        && call.op0_kind() == OpKind::Memory
        && call.memory_base() == Register::RAX
        && call.memory_index() == Register::None
        && call.memory_displacement64() == 0
}

/// The `size` bytes of the function at `addr`, its first ones being `first` (its own bytes,
/// not the entry probe's jump that may be there now).
fn original_body(addr: u64, size: u64, first: &[u8]) -> Option<Vec<u8>> {
    let mut body = patch::read_code(addr, size as usize).ok()?;
    let n = first.len().min(body.len());
    body[..n].copy_from_slice(&first[..n]);
    Some(body)
}

/// Whether the code at `at` is a PLT stub: (`endbr64`, then) a jump through memory.
fn is_plt_stub(at: u64) -> bool {
    let Ok(bytes) = patch::read_code(at, 16) else { return false };
    let mut dec = Decoder::with_ip(64, &bytes, at, DecoderOptions::NONE);
    let mut i = dec.decode();
    if i.mnemonic() == Mnemonic::Endbr64 {
        i = dec.decode();
    }
    i.flow_control() == FlowControl::IndirectBranch && i.op0_kind() == iced_x86::OpKind::Memory
}

/// The vector state this CPU and OS have.
#[derive(Clone, Copy, Debug)]
struct Machine {
    /// Bytes of a vector register: 16 (SSE), 32 (AVX) or 64 (AVX-512).
    width: i32,
    /// Mask registers are 64 bits wide (AVX512BW; else 16).
    wide_masks: bool,
    /// `BPFTIME_VECTORS=all`: every stub keeps every register (see `module_code`).
    keep_all: bool,
}

impl Machine {
    fn get() -> Machine {
        static STATE: OnceLock<Machine> = OnceLock::new();
        *STATE.get_or_init(|| {
            // std's detection checks that the OS enables the state (XCR0), not only the CPU.
            let width = if std::arch::is_x86_feature_detected!("avx512f") {
                64
            } else if std::arch::is_x86_feature_detected!("avx") {
                32
            } else {
                16
            };
            let wide_masks = std::arch::is_x86_feature_detected!("avx512bw");
            Machine { width, wide_masks, keep_all: std::env::var("BPFTIME_VECTORS").is_ok_and(|v| v == "all") }
        })
    }

    /// Vector registers: 32 with AVX-512, else 16.
    fn registers(self) -> usize {
        if self.width == 64 {
            32
        } else {
            16
        }
    }
}

/// The vector registers a stub keeps, each at a width, and whether the AVX-512 masks too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VectorSave {
    /// Bytes kept of each register (0: not kept).
    widths: [i32; 32],
    masks: bool,
}

impl VectorSave {
    /// What a stub at `point` keeps, in a function whose body needs `needs` and whose module
    /// names `named` (see `module_code`): the low 128 bits of the registers of xmm0-15 other
    /// conventions may keep (all sixteen in mid-function); the ABI's argument registers that
    /// may still be read at entry (the result registers at a return; all eight elsewhere) at
    /// the machine's full width, since values pass through them between modules even where no
    /// instruction of this one names them; and, where callers may rely on more than the ABI,
    /// every register the module names, at the width it uses.
    fn at(point: PointKind, needs: BodyNeeds, named: VectorUse) -> VectorSave {
        let m = Machine::get();
        let (needs, named) = if m.keep_all { (BodyNeeds::UNKNOWN, VectorUse::ALL) } else { (needs, named) };
        let low_halves = if point == PointKind::MidFunction { 0xffff } else { needs.low_halves };
        let mut s = VectorSave { widths: [0; 32], masks: false };
        for (i, w) in s.widths.iter_mut().enumerate().take(16) {
            if low_halves & (1 << i) != 0 {
                *w = 16;
            }
        }
        if needs.callers == Kept::All {
            for (i, w) in s.widths.iter_mut().enumerate().take(m.registers()) {
                if named.regs & (1 << i) != 0 {
                    // Registers 16-31 exist only with AVX-512, and only EVEX moves reach them.
                    *w = if i >= 16 { 64 } else { named.width.clamp(16, m.width).max(*w) };
                }
            }
            s.masks = named.masks && m.width == 64;
        }
        let abi = match point {
            PointKind::FunctionEntry => needs.arguments,
            PointKind::Return => 0b11,
            PointKind::MidFunction => 0xff,
        };
        for (i, w) in s.widths.iter_mut().enumerate().take(8) {
            if abi & (1 << i) != 0 {
                *w = m.width;
            }
        }
        s
    }

    /// Every register at full width, and the masks.
    fn everything() -> VectorSave {
        VectorSave::at(PointKind::MidFunction, BodyNeeds::UNKNOWN, VectorUse::ALL)
    }

    /// The registers kept, widest first (so that each slot stays aligned to its width), with
    /// their offsets from the 64-byte aligned save area; then the masks' offset and the size.
    fn layout(&self) -> (Vec<(usize, i32, i32)>, i32, i32) {
        let mut slots = vec![];
        let mut at = 0;
        for width in [64, 32, 16] {
            for (i, &w) in self.widths.iter().enumerate() {
                if w == width {
                    slots.push((i, w, at));
                    at += w;
                }
            }
        }
        let masks = at;
        let size = if self.masks { at + 8 * 8 } else { at };
        (slots, masks, size)
    }

    /// Reserves the save area below rsp (64-byte aligned) and stores the registers there; then,
    /// on a machine with AVX, clears the upper halves of ymm/zmm0-15 (`vzeroupper`) for the
    /// handlers. Intel cores make legacy SSE code (the agent's Rust code is compiled for
    /// x86-64's SSE2 baseline) pay for running while those halves are in use: an entry and a
    /// return probe on one function cost 300 ns a call instead of 40 on this VM's Xeon, most
    /// of it at the first SSE store of each hit and at the vector restore after it. Nothing is
    /// lost: every register that keeps more than its low 128 bits is saved whole and restored,
    /// and the others are restored by VEX loads, which clear their upper bits anyway.
    fn save(&self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        let size = self.layout().2;
        if size == 0 {
            return Ok(());
        }
        a.sub(rsp, size)?;
        a.and(rsp, -64)?;
        self.moves(a, true, |_| true, true)?;
        if Machine::get().width >= 32 {
            a.vzeroupper()?;
        }
        Ok(())
    }

    /// Loads what [`VectorSave::save`] stored (rsp at the save area). Where the registers
    /// 0-15 kept wider than 128 bits had nothing in their upper bits (code built without
    /// AVX never puts anything there, and `vzeroupper` clears them), they are loaded by their
    /// low 128 bits only, so that the application goes on with the upper halves as clean as it
    /// left them: a full-width load would leave them in use, and the application's own SSE code
    /// after the hit would pay for it. The saved upper bits are or-ed into xmm15 by VEX.128
    /// instructions (which leave the upper halves clean), before xmm15 is loaded back. Changes
    /// the flags (the caller's to restore after).
    fn restore(&self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        let (slots, _, _) = self.layout();
        let is_wide_low = |s: &(usize, i32, i32)| s.0 < 16 && s.1 > 16;
        let wide_low: Vec<(usize, i32, i32)> = slots.iter().copied().filter(is_wide_low).collect();
        if Machine::get().width < 32 || wide_low.is_empty() {
            return self.moves(a, false, |_| true, true);
        }
        let mut narrow = a.create_label();
        let mut rest = a.create_label();
        a.vpxor(xmm15, xmm15, xmm15)?;
        for &(_, w, at) in &wide_low {
            for q in (16..w).step_by(16) {
                a.vpor(xmm15, xmm15, xmmword_ptr(rsp + (at + q)))?;
            }
        }
        a.vptest(xmm15, xmm15)?;
        a.jz(narrow)?;
        self.moves(a, false, is_wide_low, false)?;
        a.jmp(rest)?;
        a.set_label(&mut narrow)?;
        for &(i, _, at) in &wide_low {
            a.vmovdqa(XMM[i], xmmword_ptr(rsp + at))?;
        }
        a.set_label(&mut rest)?;
        self.moves(a, false, |s| !is_wide_low(s), true)
    }

    /// The moves between the registers and the save area at rsp, of the slots `which` picks
    /// (a slot: register, bytes, offset), stores or loads, and of the masks where `masks`. A VEX
    /// load of a 16-byte slot clears the bits above 128, which no code relying on it reads (it
    /// is named at 128 bits only).
    fn moves(&self, a: &mut CodeAssembler, store: bool, which: impl Fn(&(usize, i32, i32)) -> bool, masks: bool) -> Result<(), IcedError> {
        let (slots, masks_at, _) = self.layout();
        let m = Machine::get();
        for (i, w, at) in slots.into_iter().filter(which) {
            match (w, store) {
                (64, true) => a.vmovdqa64(zmmword_ptr(rsp + at), ZMM[i])?,
                (64, false) => a.vmovdqa64(ZMM[i], zmmword_ptr(rsp + at))?,
                (32, true) => a.vmovdqa(ymmword_ptr(rsp + at), YMM[i])?,
                (32, false) => a.vmovdqa(YMM[i], ymmword_ptr(rsp + at))?,
                (_, true) if m.width >= 32 => a.vmovdqa(xmmword_ptr(rsp + at), XMM[i])?,
                (_, false) if m.width >= 32 => a.vmovdqa(XMM[i], xmmword_ptr(rsp + at))?,
                (_, true) => a.movaps(xmmword_ptr(rsp + at), XMM[i])?,
                (_, false) => a.movaps(XMM[i], xmmword_ptr(rsp + at))?,
            }
        }
        if self.masks && masks {
            for (i, k) in MASKS.iter().enumerate() {
                let at = rsp + (masks_at + 8 * i as i32);
                match (m.wide_masks, store) {
                    (true, true) => a.kmovq(qword_ptr(at), *k)?,
                    (true, false) => a.kmovq(*k, qword_ptr(at))?,
                    (false, true) => a.kmovw(word_ptr(at), *k)?,
                    (false, false) => a.kmovw(*k, word_ptr(at))?,
                }
            }
        }
        Ok(())
    }

    /// In words, for `BPFTIME_VERBOSE`: e.g. "xmm0-7 (512 bits) + xmm9, xmm12 (128 bits)".
    fn describe(&self) -> String {
        let mut parts = vec![];
        for width in [64, 32, 16] {
            let regs: Vec<usize> = (0..32).filter(|&i| self.widths[i] == width).collect();
            if regs.is_empty() {
                continue;
            }
            let mut runs: Vec<String> = vec![];
            let mut k = 0;
            while k < regs.len() {
                let mut e = k;
                while e + 1 < regs.len() && regs[e + 1] == regs[e] + 1 {
                    e += 1;
                }
                runs.push(if e == k { format!("{}", regs[k]) } else { format!("{}-{}", regs[k], regs[e]) });
                k = e + 1;
            }
            parts.push(format!("xmm{} ({} bits)", runs.join(", xmm"), width * 8));
        }
        if self.masks {
            parts.push("k0-7".into());
        }
        if parts.is_empty() {
            "no vector register".into()
        } else {
            parts.join(" + ")
        }
    }
}

const XMM: [AsmRegisterXmm; 16] = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];
const YMM: [AsmRegisterYmm; 16] = [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22,
    zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];
const MASKS: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];

/// Offsets of [`PtRegs`] fields, as the stubs address them.
mod pt {
    use crate::regs::PtRegs;
    use std::mem::{offset_of, size_of};
    pub const ORIG_AX: i32 = offset_of!(PtRegs, orig_ax) as i32;
    pub const IP: i32 = offset_of!(PtRegs, ip) as i32;
    pub const CS: i32 = offset_of!(PtRegs, cs) as i32;
    pub const FLAGS: i32 = offset_of!(PtRegs, flags) as i32;
    pub const SP: i32 = offset_of!(PtRegs, sp) as i32;
    pub const SS: i32 = offset_of!(PtRegs, ss) as i32;
    pub const SIZE: i32 = size_of::<PtRegs>() as i32;
}

/// The general registers and their `pt_regs` fields.
const GPRS: [(AsmRegister64, i32); 15] = [
    (r15, offset_of!(PtRegs, r15) as i32),
    (r14, offset_of!(PtRegs, r14) as i32),
    (r13, offset_of!(PtRegs, r13) as i32),
    (r12, offset_of!(PtRegs, r12) as i32),
    (rbp, offset_of!(PtRegs, bp) as i32),
    (rbx, offset_of!(PtRegs, bx) as i32),
    (r11, offset_of!(PtRegs, r11) as i32),
    (r10, offset_of!(PtRegs, r10) as i32),
    (r9, offset_of!(PtRegs, r9) as i32),
    (r8, offset_of!(PtRegs, r8) as i32),
    (rax, offset_of!(PtRegs, ax) as i32),
    (rcx, offset_of!(PtRegs, cx) as i32),
    (rdx, offset_of!(PtRegs, dx) as i32),
    (rsi, offset_of!(PtRegs, si) as i32),
    (rdi, offset_of!(PtRegs, di) as i32),
];

/// Whether the register is callee-saved (preserved by the dispatch call itself).
fn callee_saved(r: AsmRegister64) -> bool {
    [rbx, rbp, r12, r13, r14, r15].contains(&r)
}

/// Emits a stub body: builds a kernel-layout `pt_regs` on the stack, saves the vector state
/// that is live at `point`, calls `f(arg0, &pt_regs)` (`arg0` = None passes the `pt_regs` as
/// the first argument instead), restores what the call may have changed and leaves rsp at the
/// probe point's value. At a return, the qword just below rsp then holds the `ip` the call left
/// in the `pt_regs`: the real return address.
///
/// The frame is made with plain moves rather than pushes (fewer stack-engine syncs), and only
/// registers the call can change are reloaded: callee-saved ones are preserved by `f` itself
/// (bx and r12 are reloaded because the stub uses them). The vector registers in `saved` are
/// kept. The call runs on the thread's handler stack where it has one (see
/// [`emit_handler_stack_switch`]).
///
/// With `mark` (for dispatchers that admit every hit: they clear it), the stub marks the
/// thread's hit as entering (`HookThread::entering`) once it knows the thread can run our code,
/// and `mark` labels the instruction after: the stub's entry window ends there (see
/// [`register_entry_window`]).
#[allow(clippy::too_many_arguments)]
fn emit_probe_call(
    a: &mut CodeAssembler,
    point: PointKind,
    stack: HitStack,
    saved: VectorSave,
    ip: Option<u64>,
    arg0: Option<u64>,
    f: u64,
    mark: Option<&mut CodeLabel>,
) -> Result<(), IcedError> {
    let red_zone = point.red_zone();
    // The frame: pt_regs, below the red zone where it is live.
    if point == PointKind::MidFunction {
        // Flags first: later arithmetic would change them.
        a.lea(rsp, ptr(rsp - (red_zone + pt::SIZE - pt::FLAGS - 8)))?;
        a.pushfq()?;
        a.lea(rsp, ptr(rsp - pt::FLAGS))?;
    } else {
        a.lea(rsp, ptr(rsp - pt::SIZE))?;
        a.mov(qword_ptr(rsp + pt::FLAGS), 0x246i32)?; // what flags usually hold at a call
    }
    for (r, off) in GPRS {
        a.mov(qword_ptr(rsp + off), r)?;
    }
    a.lea(rax, ptr(rsp + pt::SIZE + red_zone))?;
    a.mov(qword_ptr(rsp + pt::SP), rax)?;
    a.mov(qword_ptr(rsp + pt::SS), 0x2bi32)?;
    a.mov(qword_ptr(rsp + pt::CS), 0x33i32)?;
    a.mov(qword_ptr(rsp + pt::ORIG_AX), -1i32)?;
    match ip {
        Some(ip) => {
            a.mov(rax, ip)?;
            a.mov(qword_ptr(rsp + pt::IP), rax)?;
        }
        None => a.mov(qword_ptr(rsp + pt::IP), 0i32)?,
    }
    a.mov(rbx, rsp)?;
    // A thread whose thread pointer is not glibc's (Go's runtime in a program built without
    // cgo gives its threads one of their own) cannot run our code, whose thread-locals are read
    // through it: its hit runs no handler, the probed code goes on as if it had none. glibc's
    // thread control block starts with a pointer to itself and holds another at 16 bytes. Only
    // in stubs that go on to the probed code by themselves: an entry or a mid-function point's
    // (`ip`), a patched return site's. (A call whose return address was replaced began on a
    // thread that could run us, and only our thread-locals know where it returns; a rewritten
    // system call site's stub goes where its dispatcher says, and such a thread never had one
    // rewritten: it makes its calls without interception.)
    let mut joined = a.create_label();
    if ip.is_some() || f == return_site_dispatch as *const () as u64 {
        let mut native = a.create_label();
        let mut foreign = a.create_label();
        a.mov(rax, qword_ptr(0u64).fs())?;
        a.test(rax, rax)?;
        a.je(foreign)?;
        a.cmp(rax, qword_ptr(16u64).fs())?;
        a.je(native)?;
        a.set_label(&mut foreign)?;
        if point == PointKind::FunctionEntry {
            // Not overridden (zero, as the dispatcher answers): the function runs (see below).
            a.xor(eax, eax)?;
        }
        a.jmp(joined)?;
        a.set_label(&mut native)?;
    }
    if let Some(end) = mark {
        a.mov(byte_ptr(thread_slots().entering).fs(), 1)?;
        a.set_label(end)?;
    }
    let handler_stacks = if stack == HitStack::Agent { handler_stacks() } else { None };
    if let Some(h) = handler_stacks {
        emit_handler_stack_switch(a, h.maker)?;
    }
    a.and(rsp, -16)?;
    saved.save(a)?;
    if point == PointKind::MidFunction {
        a.cld()?;
    }
    match arg0 {
        Some(v) => {
            a.mov(rdi, v)?;
            a.mov(rsi, rbx)?;
        }
        None => a.mov(rdi, rbx)?,
    }
    a.mov(rax, f)?;
    a.call(rax)?;
    saved.restore(a)?;
    a.mov(rsp, rbx)?;
    if handler_stacks.is_some() {
        // Off the handler stack: free again if this stub took it (`r12` 0), else left to its
        // user, the byte found written to the sink beside it (a store: the flags stay).
        a.mov(byte_ptr(r12 * 4 + thread_slots().stack_in_use).fs(), r12b)?;
        emit_deferred_release(a, joined)?;
    }
    a.set_label(&mut joined)?;
    if point == PointKind::FunctionEntry {
        // The dispatcher's answer (return at once?), in the flags: nothing below changes them.
        a.test(rax, rax)?;
    }
    if point == PointKind::Return {
        // Where to go on, in the frame's last word (just below the final rsp, where signal
        // frames never go: the kernel skips the 128-byte red zone), so that no register has to
        // carry it (a caller may keep any register the callee does not touch live).
        a.mov(rax, qword_ptr(rsp + pt::IP))?;
        a.mov(qword_ptr(rsp + pt::SIZE - 8), rax)?;
    }
    for (r, off) in GPRS {
        if !callee_saved(r) || r == rbx || (r == r12 && handler_stacks.is_some()) {
            a.mov(r, qword_ptr(rsp + off))?;
        }
    }
    if point == PointKind::MidFunction {
        a.lea(rsp, ptr(rsp + pt::FLAGS))?;
        a.popfq()?;
        a.lea(rsp, ptr(rsp + (pt::SIZE - pt::FLAGS - 8) + red_zone))?;
    } else {
        a.lea(rsp, ptr(rsp + pt::SIZE))?;
    }
    Ok(())
}

/// Emits a stub's release of the signals deferred while its hit ran (see `signals::defer`), once
/// it is off the handler stack, where it took that stack (`r12` 0: one that found it in use
/// leaves them to its holder, a stub below, which has them delivered off it) and the thread is
/// not busy (a hit inside our own work leaves them to that work):
/// `rt_sigprocmask(SIG_UNBLOCK, deferred)`, by a raw system call with the selector at ALLOW
/// meanwhile, so that the kernel delivers them here, at the probed code, as its uprobes
/// deliver a signal on the way back from the trap. Released from the dispatcher,
/// on the handler stack, a handler that leaves by `siglongjmp` would leave that stack held for
/// good (see [`release_deferred`]). Goes on at `none`, the stub's next instruction; changes the
/// caller-saved registers but `rax`, and the flags.
fn emit_deferred_release(a: &mut CodeAssembler, none: CodeLabel) -> Result<(), IcedError> {
    let slots = thread_slots();
    a.cmp(qword_ptr(slots.deferred).fs(), 0)?;
    a.je(none)?;
    a.test(r12d, r12d)?;
    a.jne(none)?;
    a.cmp(byte_ptr(slots.busy).fs(), 0)?;
    a.jne(none)?;
    a.mov(r9, rax)?;
    a.mov(rax, qword_ptr(slots.deferred).fs())?;
    a.mov(qword_ptr(slots.deferred).fs(), 0)?;
    // The set just below the stack pointer: signal frames skip the red zone.
    a.mov(qword_ptr(rsp - 8), rax)?;
    a.movzx(r8d, byte_ptr(slots.selector).fs())?;
    a.mov(byte_ptr(slots.selector).fs(), 0)?;
    a.mov(eax, libc::SYS_rt_sigprocmask as u32)?;
    a.mov(edi, libc::SIG_UNBLOCK as u32)?;
    a.lea(rsi, ptr(rsp - 8))?;
    a.xor(edx, edx)?;
    a.mov(r10d, 8u32)?;
    a.syscall()?;
    a.mov(byte_ptr(slots.selector).fs(), r8b)?;
    a.mov(rax, r9)
}

/// A site's entry stub, assembled at `at`, and where its entry window ends.
fn entry_stub(site: u64, probe_addr: u64, trampoline: u64, at: u64, point: PointKind, saved: VectorSave) -> Result<(Vec<u8>, u64), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut window = a.create_label();
    let dispatch = entry_dispatch as *const () as u64;
    emit_probe_call(&mut a, point, HitStack::for_hits(), saved, Some(probe_addr), Some(site), dispatch, Some(&mut window))?;
    if point == PointKind::FunctionEntry {
        // Overridden: back to the caller with ax as the result, the function not run.
        let mut run_function = a.create_label();
        a.je(run_function)?;
        a.ret()?;
        a.set_label(&mut run_function)?;
    }
    a.jmp(trampoline)?; // same page: a direct jump
    let r = a.assemble_options(at, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let end = r.label_ip(&window)?;
    Ok((r.inner.code_buffer, end))
}

/// See [`return_stub`].
static RETURN_STUB: OnceLock<u64> = OnceLock::new();

/// The shared return stub (built once).
fn return_stub() -> u64 {
    *RETURN_STUB.get_or_init(|| {
        let build = || -> Result<u64, String> {
            let at = patch::alloc_near(return_dispatch as *const () as u64, PAGE).ok_or("no memory for the return stub")?;
            let mut a = CodeAssembler::new(64).map_err(|e| e.to_string())?;
            let mut window = a.create_label();
            (|| -> Result<(), IcedError> {
                // An indirect jump rather than a `ret`: the return-stack predictor stays in
                // step with the calls still to return.
                // Shared by every function: all registers kept.
                let dispatch = return_dispatch as *const () as u64;
                emit_probe_call(&mut a, PointKind::Return, HitStack::for_hits(), VectorSave::everything(), None, None, dispatch, Some(&mut window))?;
                a.jmp(qword_ptr(rsp - 8))
            })()
            .map_err(|e| e.to_string())?;
            let r = a.assemble_options(at, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).map_err(|e| e.to_string())?;
            register_entry_window(at, r.label_ip(&window).map_err(|e| e.to_string())?);
            let code = r.inner.code_buffer;
            // SAFETY: `at` is a fresh read-write page of PAGE bytes.
            unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len()) };
            patch::make_executable(at, PAGE).map_err(|e| e.to_string())?;
            Ok(at)
        };
        build().unwrap_or_else(|e| {
            eprintln!("bpftime: cannot build the uretprobe stub: {e}");
            0
        })
    })
}

/// The instructions covering the first `PATCH_LEN` bytes at `addr`, checked for relocation.
/// A whole function shorter than a jump is covered too when the padding after it makes room:
/// its last instruction (a return or a jump) is relocated, and the jump spills into padding.
fn decode_prologue(addr: u64, info: SiteInfo, module: Option<&ModuleCode>) -> Result<Vec<Instruction>, AttachError> {
    let function_size = info.function_size;
    let unpatchable = |reason: String| AttachError::Unpatchable { addr, reason };
    let bytes = patch::read_code(addr, 32).map_err(|e| unpatchable(format!("cannot read the code: {e}")))?;
    let mut dec = Decoder::with_ip(64, &bytes, addr, DecoderOptions::NONE);
    let mut instrs = vec![];
    let mut len = 0;
    while len < PATCH_LEN {
        let i = dec.decode();
        if i.is_invalid() {
            return Err(unpatchable(format!("invalid instruction at {:#x}", i.ip())));
        }
        let ends_function = info.at_entry && function_size > 0 && (len + i.len()) as u64 == function_size;
        if ends_function
            && function_size + info.padding >= PATCH_LEN as u64
            && matches!(i.flow_control(), FlowControl::Return | FlowControl::UnconditionalBranch)
        {
            len += i.len();
            instrs.push(i);
            break;
        }
        match i.flow_control() {
            FlowControl::Return | FlowControl::Interrupt | FlowControl::Exception => {
                return Err(unpatchable(format!("the code ends ({:?}) after {} bytes, before the {PATCH_LEN} bytes a jump needs", i.flow_control(), len)))
            }
            _ => {}
        }
        len += i.len();
        instrs.push(i);
    }
    if function_size != 0 && function_size < len as u64 {
        return Err(unpatchable(format!("the function is {function_size} bytes, shorter than the {len} bytes to patch")));
    }
    // A branch into the middle of the patched bytes would land in our jump: from elsewhere in
    // the module (a `.cold` part),
    let patched = len.max(PATCH_LEN) as u64;
    if module.is_some_and(|m| m.jumped_into_from_outside(addr + 1, addr + patched)) {
        return Err(unpatchable(format!("a jump from outside the function lands inside the {patched} bytes the probe overwrites")));
    }
    // or from the function itself.
    if function_size > 0 {
        let body = patch::read_code(addr, function_size as usize).map_err(|e| unpatchable(e.to_string()))?;
        let mut dec = Decoder::with_ip(64, &body, addr, DecoderOptions::NONE);
        while dec.can_decode() {
            let i = dec.decode();
            if matches!(i.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch) {
                let t = i.near_branch_target();
                if t > addr && t < addr + patched {
                    return Err(unpatchable(format!("the branch at {:#x} jumps into the bytes the probe overwrites ({t:#x})", i.ip())));
                }
            }
        }
    }
    Ok(instrs)
}

fn sites() -> &'static Mutex<HashMap<u64, &'static Site>> {
    static SITES: OnceLock<Mutex<HashMap<u64, &'static Site>>> = OnceLock::new();
    SITES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The patch lock and the site table, held by the thread that forks from before the fork
/// until after it, in the parent and in the child (pthread_atfork(3)): a child copied while
/// another thread held them (the link follower's attach batches hold the patch lock for long)
/// would find them locked for ever, and its next attach, or its next library load (see the
/// agent's `libraries`), would hang.
struct ForkGuards(std::cell::UnsafeCell<Option<(std::sync::MutexGuard<'static, ()>, std::sync::MutexGuard<'static, HashMap<u64, &'static Site>>, u64)>>);

// SAFETY: only the thread holding both locks touches the cell (set after taking them, emptied
// before their release), so no two threads ever do at once.
unsafe impl Sync for ForkGuards {}

static FORK_GUARDS: ForkGuards = ForkGuards(std::cell::UnsafeCell::new(None));

/// Registers the fork handlers of [`ForkGuards`] (once).
fn keep_locks_whole_across_fork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Asynchronous signals wait from before the locks are taken (this runs first of the
    // agent's prepare handlers) until they are all released: a handler run in between
    // (signals deferred while it waited run as it stops waiting) would find the agent's locks,
    // its allocator's among them, held by its own thread.
    extern "C" fn prepare() {
        let mask = crate::signals::block_async_signals();
        without_probes(|| {
            let patching = PATCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let map = sites().lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: this thread holds both locks (see `ForkGuards`).
            unsafe { *FORK_GUARDS.0.get() = Some((patching, map, mask)) };
        });
    }
    extern "C" fn release() {
        // SAFETY: called after `prepare` on the thread that holds both locks (in a child, its
        // only thread); dropping the guards unlocks them (std's locks keep no owner).
        let mask = without_probes(|| {
            unsafe { (*FORK_GUARDS.0.get()).take() }.map(|(patching, map, mask)| {
                drop((map, patching));
                mask
            })
        });
        if let Some(mask) = mask {
            crate::signals::restore_signal_mask(mask);
        }
    }
    ONCE.call_once(|| {
        // SAFETY: registers plain extern "C" handlers (pthread_atfork(3)).
        unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
    });
}

fn next_id() -> ProbeId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ProbeId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Builds a new site (not yet installed): a jump where one fits, else an int3.
fn build_site(addr: u64, info: SiteInfo) -> Result<&'static Site, AttachError> {
    let module = module_code::module_at(addr);
    match decode_prologue(addr, info, module.as_ref()) {
        Ok(instrs) => build_jump_site(addr, info, instrs, module),
        Err(AttachError::Unpatchable { reason, .. }) if !reason.starts_with("invalid instruction") && !reason.starts_with("cannot read") => {
            build_trap_site(addr, info, reason.clone()).map_err(|e| match e {
                AttachError::Unpatchable { reason: r2, .. } => AttachError::Unpatchable { addr, reason: format!("{reason}; and as an int3: {r2}") },
                e => e,
            })
        }
        Err(e) => Err(e),
    }
}

/// A site kept as an `int3` over the first byte of its instruction; the trampoline holds that
/// instruction, relocated, and a jump back after it.
fn build_trap_site(addr: u64, info: SiteInfo, remark: String) -> Result<&'static Site, AttachError> {
    let unpatchable = |reason: String| AttachError::Unpatchable { addr, reason };
    let bytes = patch::read_code(addr, 16).map_err(|e| unpatchable(format!("cannot read the code: {e}")))?;
    let first = Decoder::with_ip(64, &bytes, addr, DecoderOptions::NONE).decode();
    if first.is_invalid() {
        return Err(unpatchable(format!("invalid instruction at {addr:#x}")));
    }
    if first.len() > 1 && (patch::overlaps(addr + 1, first.len() as u64 - 1) || crate::syscalls::overlaps_pads(addr + 1, first.len() as u64 - 1)) {
        return Err(unpatchable("its instruction runs into bytes another probe or a rewritten system call patched".into()));
    }
    let page = patch::alloc_near(addr, PAGE).ok_or(AttachError::NoNearMemory(addr))?;
    // A direct call returns to the function itself (see `build_jump_site`).
    let calls_out = first.code() == Code::Call_rel32_64;
    let relocated = if calls_out { call_as_push_and_jump(&first).map_err(|e| unpatchable(format!("relocating a call: {e}")))?.to_vec() } else { vec![first] };
    let enc = BlockEncoder::encode(64, InstructionBlock::new(&relocated, page), BlockEncoderOptions::NONE)
        .map_err(|e| unpatchable(format!("cannot relocate the instruction: {e}")))?;
    let mut code = enc.code_buffer;
    if !calls_out {
        let back = i32::try_from((addr + first.len() as u64).wrapping_sub(page + code.len() as u64 + 5) as i64).map_err(|_| AttachError::NoNearMemory(addr))?;
        code.push(0xe9);
        code.extend_from_slice(&back.to_le_bytes());
    }
    // SAFETY: `page` is a fresh read-write mapping of PAGE bytes; the code is a few dozen.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
    patch::make_executable(page, PAGE).map_err(|e| AttachError::Io { addr, source: e })?;
    let mut original = [0u8; PATCH_LEN];
    original.copy_from_slice(&bytes[..PATCH_LEN]);
    let mut site = Box::new(Site {
        addr,
        at_entry: info.at_entry,
        method: Method::Trap,
        original,
        jump: [0xcc, 0, 0, 0, 0],
        slot: 0,
        entry: AtomicPtr::new(empty_list()),
        ret: AtomicPtr::new(empty_list()),
        installed: AtomicU8::new(Installed::Original as u8),
        trampoline_ret: None,
        to_trampoline: [0; PATCH_LEN],
        returns: OnceLock::new(),
        needs: BodyNeeds::UNKNOWN,
        module: None,
        named: VectorUse::ALL,
        returns_twice: info.returns_twice,
        remark,
        first_len: first.len() as u8,
        yielded: AtomicBool::new(false),
        mapped_from: mapped_at(&crate::procmaps::mappings(), addr),
    });
    site.slot = patch::register_site(addr, 1, page, &[], &*site as *const Site as u64).ok_or(AttachError::TooManySites)?;
    Ok(Box::leak(site))
}

/// Runs an int3 site's handlers for a thread that trapped on it (from the SIGTRAP handler,
/// in the trapped thread's flow); `gregs` are its registers, written back on return. True when
/// a handler overrode the function's result: `gregs` then return to the caller.
pub(crate) fn trap_hit(site: u64, gregs: &mut [i64; 23]) -> bool {
    // SAFETY: the address of a leaked `Site`, registered by `build_trap_site`.
    let site = unsafe { &*(site as *const Site) };
    // A function entry's pt_regs: ip is the probe address, orig_ax not a system call.
    let regs = PtRegs { orig_ax: u64::MAX, ip: site.addr, ..PtRegs::from_gregs(gregs) };
    if let Some(rc) = on_entry(site, &regs) {
        returned_at_entry(site, &PtRegs { ax: rc, ..regs });
        // Return at once: pop the return address (perhaps our return stub's) into rip.
        let stack = gregs[libc::REG_RSP as usize] as u64;
        // SAFETY: at a function's first instruction [rsp] is its return address, on the
        // trapped thread's stack.
        let ret = unsafe { (stack as *const u64).read() };
        gregs[libc::REG_RAX as usize] = rc as i64;
        gregs[libc::REG_RSP as usize] = (stack + 8) as i64;
        gregs[libc::REG_RIP as usize] = ret as i64;
        return true;
    }
    false
}

/// The address of the `ret` a function entry's trampoline can run itself, if there is one:
/// the relocated instructions `instrs` run straight on (no branch) to a plain `ret`, either the
/// last of them (a function shorter than a jump) or the next instruction, which then only the
/// trampoline reaches (no branch in the body targets it, and the body has no indirect jump).
/// Return probes then run in the trampoline, before that `ret`: tiny functions, whose `ret`s
/// leave no room for a jump of their own, need no return address replaced.
fn trampoline_ret(addr: u64, info: SiteInfo, instrs: &[Instruction], module: Option<&ModuleCode>) -> Option<u64> {
    let plain_ret = |i: &Instruction| i.mnemonic() == Mnemonic::Ret && i.op_count() == 0;
    let (last, before) = instrs.split_last()?;
    // Nothing outside the function may jump to that `ret` (it would run the original one).
    let module = module?;
    if before.iter().any(|i| i.flow_control() != FlowControl::Next) {
        return None;
    }
    if plain_ret(last) {
        return Some(last.ip());
    }
    let size = info.function_size;
    let covered: u64 = instrs.iter().map(|i| i.len() as u64).sum();
    if last.flow_control() != FlowControl::Next
        || size <= covered
        || size > 1 << 20
        || patch::overlaps(addr, size)
        || module.jumped_into_from_outside(addr + covered, addr + covered + 1)
    {
        return None;
    }
    let body = patch::read_code(addr, size as usize).ok()?;
    let mut dec = Decoder::with_ip(64, &body, addr, DecoderOptions::NONE);
    let mut ret = None;
    while dec.can_decode() {
        let i = dec.decode();
        match i.flow_control() {
            FlowControl::IndirectBranch | FlowControl::XbeginXabortXend => return None,
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch if i.near_branch_target() == addr + covered => return None,
            _ if i.is_invalid() => return None,
            _ => {}
        }
        if i.ip() == addr + covered && plain_ret(&i) {
            ret = Some(i.ip());
        }
    }
    ret
}

/// `call` (a direct near call) as the instructions that push its return address (without
/// touching the flags, as `call` does not) and jump to its target.
fn call_as_push_and_jump(call: &Instruction) -> Result<[Instruction; 4], IcedError> {
    let ret = call.next_ip();
    Ok([
        Instruction::with2(Code::Lea_r64_m, Register::RSP, MemoryOperand::with_base_displ(Register::RSP, -8))?,
        Instruction::with2(Code::Mov_rm32_imm32, MemoryOperand::with_base(Register::RSP), ret as u32)?,
        Instruction::with2(Code::Mov_rm32_imm32, MemoryOperand::with_base_displ(Register::RSP, 4), (ret >> 32) as u32)?,
        Instruction::with_branch(Code::Jmp_rel32_64, call.near_branch_target())?,
    ])
}

/// Builds the stub and trampoline of a jump site.
fn build_jump_site(addr: u64, info: SiteInfo, instrs: Vec<Instruction>, module: Option<ModuleCode>) -> Result<&'static Site, AttachError> {
    let at_entry = info.at_entry;
    let page = patch::alloc_near(addr, PAGE).ok_or(AttachError::NoNearMemory(addr))?;
    let tramp = page + TRAMPOLINE_AT;
    let unpatchable = |reason: String| AttachError::Unpatchable { addr, reason };
    let covered: u64 = instrs.iter().map(|i| i.len() as u64).sum();
    // Where the function's `ret` follows the relocated instructions, the trampoline runs it
    // too, after a 5-byte nop that return probes turn into a jump (no jump back).
    let ret_here = if at_entry { trampoline_ret(addr, info, &instrs, module.as_ref()) } else { None };
    let relocated = match ret_here {
        Some(ret) if instrs.last().is_some_and(|i| i.ip() == ret) => &instrs[..instrs.len() - 1],
        _ => &instrs[..],
    };
    // A direct call ending them returns straight into the function, past the patched bytes:
    // the trampoline pushes the original return address and jumps (as the kernel's emulated
    // call does), so unwinders, stack walks and return probes see the function's own address,
    // not the trampoline's (an exception could not be unwound through one).
    let calls_out = ret_here.is_none() && relocated.last().is_some_and(|i| i.code() == Code::Call_rel32_64);
    let relocated = match relocated.split_last() {
        Some((call, before)) if calls_out => {
            let mut v = before.to_vec();
            v.extend(call_as_push_and_jump(call).map_err(|e| unpatchable(format!("relocating a call: {e}")))?);
            v
        }
        _ => relocated.to_vec(),
    };
    let block = InstructionBlock::new(&relocated, tramp);
    let enc = BlockEncoder::encode(64, block, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .map_err(|e| unpatchable(format!("cannot relocate the first instructions: {e}")))?;
    let mut tcode = enc.code_buffer.clone();
    let mut offsets = enc.new_instruction_offsets.clone();
    let nop_at = tramp + tcode.len() as u64;
    if ret_here.is_some() {
        if relocated.len() < instrs.len() {
            offsets.push(tcode.len() as u32); // the relocated `ret`: at the nop before its copy
        }
        tcode.extend_from_slice(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3]);
    } else if !calls_out {
        // jmp rel32 back after the covered bytes (the page is within 2 GiB of the site).
        let back = (addr + covered).wrapping_sub(tramp + tcode.len() as u64 + 5) as i64;
        let back = i32::try_from(back).map_err(|_| AttachError::NoNearMemory(addr))?;
        tcode.push(0xe9);
        tcode.extend_from_slice(&back.to_le_bytes());
    }
    let original: [u8; PATCH_LEN] = patch::read_code(addr, PATCH_LEN).map_err(|e| unpatchable(e.to_string()))?.try_into().expect("5 bytes");
    // Boxed now so the stub can be given its final address; leaked once complete.
    let covered_all = info.function_size > 0 && covered >= info.function_size;
    let mut site = Box::new(Site {
        addr,
        at_entry,
        method: if covered_all && at_entry { Method::JumpIntoPadding } else { Method::Jump },
        original,
        jump: [0; PATCH_LEN],
        slot: 0,
        entry: AtomicPtr::new(empty_list()),
        ret: AtomicPtr::new(empty_list()),
        installed: AtomicU8::new(Installed::Original as u8),
        trampoline_ret: ret_here.map(|ret| (ret, nop_at)),
        to_trampoline: [0; PATCH_LEN],
        returns: OnceLock::new(),
        needs: BodyNeeds::UNKNOWN,
        named: module.as_ref().map_or(VectorUse::ALL, |m| m.vectors_at(addr)),
        module,
        returns_twice: info.returns_twice,
        remark: String::new(),
        first_len: instrs[0].len() as u8,
        yielded: AtomicBool::new(false),
        mapped_from: mapped_at(&crate::procmaps::mappings(), addr),
    });
    let point = if at_entry { PointKind::FunctionEntry } else { PointKind::MidFunction };
    if at_entry {
        site.needs = body_needs(addr, info.function_size, &original, site.module.as_ref());
    }
    let (stub, window_end) = entry_stub(&*site as *const Site as u64, addr, tramp, page, point, VectorSave::at(point, site.needs, site.named))
        .map_err(|e| unpatchable(format!("assembling the stub: {e}")))?;
    if stub.len() > TRAMPOLINE_AT as usize || tcode.len() > PAGE - TRAMPOLINE_AT as usize {
        return Err(unpatchable("stub too large".into()));
    }
    // SAFETY: `page` is a fresh read-write mapping of PAGE bytes; both pieces fit (checked).
    unsafe {
        std::ptr::copy_nonoverlapping(stub.as_ptr(), page as *mut u8, stub.len());
        std::ptr::copy_nonoverlapping(tcode.as_ptr(), tramp as *mut u8, tcode.len());
    }
    patch::make_executable(page, PAGE).map_err(|e| AttachError::Io { addr, source: e })?;
    register_entry_window(page, window_end);
    // Instruction boundaries inside the patched bytes, for moving threads stopped there.
    let mut map = vec![];
    let mut off = 0u32;
    for (k, i) in instrs.iter().enumerate() {
        if off > 0 && (off as usize) < PATCH_LEN && offsets[k] != u32::MAX {
            map.push((off, offsets[k]));
        }
        off += i.len() as u32;
    }
    let slot = patch::register_site(addr, PATCH_LEN as u32, tramp, &map, 0).ok_or(AttachError::TooManySites)?;
    let rel = page.wrapping_sub(addr + PATCH_LEN as u64) as i64;
    if rel < i32::MIN as i64 || rel > i32::MAX as i64 {
        return Err(AttachError::NoNearMemory(addr));
    }
    let mut jump = [0xe9, 0, 0, 0, 0];
    jump[1..].copy_from_slice(&(rel as i32).to_le_bytes());
    site.jump = jump;
    let rel = i32::try_from(tramp.wrapping_sub(addr + PATCH_LEN as u64) as i64).map_err(|_| AttachError::NoNearMemory(addr))?;
    site.to_trampoline[0] = 0xe9;
    site.to_trampoline[1..].copy_from_slice(&rel.to_le_bytes());
    // Where the first instruction is shorter than the jump, the jump's byte right after it is
    // an `int3` (a landing chosen as its target), for a kernel uprobe placed over it later.
    let first = site.first_len as usize;
    if first < PATCH_LEN {
        let from = addr + PATCH_LEN as u64;
        // (The jump to the trampoline is only ever written where the function's `ret` runs there.)
        let to_trampoline = site.trampoline_ret.is_some();
        for (bytes, target, used) in [(&mut site.jump, page, true), (&mut site.to_trampoline, tramp, to_trampoline)] {
            if used && bytes[first] != 0xcc {
                match crate::landing::landing(from, first as u32 - 1, target) {
                    Some(t) => bytes[1..].copy_from_slice(&(t.wrapping_sub(from) as i64 as i32).to_le_bytes()),
                    None => site.remark = "no landing for its jump: a kernel uprobe placed over it later would break the function".into(),
                }
            }
        }
    }
    site.slot = slot;
    Ok(Box::leak(site))
}

/// A stub for a system call site (see `syscalls`): within 2 GiB of `near`, it saves the whole
/// register state as a mid-function probe does, calls `dispatch(context, &mut pt_regs)`,
/// restores the registers (the dispatcher's `ax`, `cx`, `r11` included) and jumps to `r11`,
/// where the dispatcher says the thread goes on. Returns the stub's address.
pub(crate) fn syscall_stub(near: u64, context: u64, dispatch: u64) -> Result<u64, AttachError> {
    let page = patch::alloc_near(near, PAGE).ok_or(AttachError::NoNearMemory(near))?;
    let code = (|| -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        emit_probe_call(&mut a, PointKind::MidFunction, HitStack::for_hits(), VectorSave::everything(), None, Some(context), dispatch, None)?;
        a.jmp(r11)?;
        a.assemble(page)
    })()
    .map_err(|e| AttachError::Unpatchable { addr: near, reason: format!("assembling the system call stub: {e}") })?;
    if code.len() > PAGE {
        return Err(AttachError::Unpatchable { addr: near, reason: "stub too large".into() });
    }
    // SAFETY: `page` is a fresh read-write mapping of PAGE bytes; the code fits (checked).
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
    patch::make_executable(page, PAGE).map_err(|e| AttachError::Io { addr: near, source: e })?;
    Ok(page)
}

/// Information about the place to probe.
#[derive(Clone, Copy, Debug)]
pub struct SiteInfo {
    /// Size of the enclosing function (0 if unknown): used to refuse unsafe patches.
    pub function_size: u64,
    /// Whether `addr` is the function's first byte (required for return probes).
    pub at_entry: bool,
    /// Bytes after the function's end that are alignment padding nobody executes (0 if
    /// unknown): a function shorter than a jump may spill its patch into them.
    pub padding: u64,
    /// The function returns twice (`setjmp`, `vfork`: see `symbols::returns_twice`): it keeps
    /// its return address and returns through it again, so return probes that replace it give
    /// each call site a return stub of its own instead of a shadow frame.
    pub returns_twice: bool,
}

/// Attaches `handler` to `addr`: patches the code on the first probe of a site.
pub fn attach(addr: u64, info: SiteInfo, kind: ProbeKind, handler: Arc<dyn ProbeHandler>) -> Result<ProbeId, AttachError> {
    handler_stacks();
    keep_locks_whole_across_fork();
    if kind == ProbeKind::Return && !info.at_entry {
        return Err(AttachError::ReturnNotAtEntry { addr });
    }
    if kind == ProbeKind::Return && return_stub() == 0 {
        return Err(AttachError::Unpatchable { addr, reason: "no uretprobe stub".into() });
    }
    if kind == ProbeKind::Return && info.returns_twice && own_return_stubs().is_none() {
        return Err(AttachError::Unpatchable { addr, reason: "no return stubs for a function that returns twice".into() });
    }
    let _patching = PATCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut map = sites().lock().unwrap_or_else(|e| e.into_inner());
    // Sites go stale when their library goes: once per batch of attaches, which takes the
    // mapped files as fixed (reading every site's bytes for every attach was quadratic).
    static STALE_CHECKED: AtomicU64 = AtomicU64::new(0);
    if crate::procmaps::due_in_batch(&STALE_CHECKED) {
        yield_sites(&map);
        forget_stale_sites(&mut map);
    }
    let site = match map.get(&addr) {
        Some(s) => *s,
        None => {
            if patch::overlaps(addr, 1) || crate::syscalls::overlaps_pads(addr, 1) {
                return Err(AttachError::Unpatchable { addr, reason: "the byte is inside code another probe or a rewritten system call patched".into() });
            }
            if let Some(owner) = map.values().find(|s| s.trampoline_ret.is_some_and(|t| t.0 == addr)) {
                let reason =
                    format!("this `ret` runs in the trampoline of the probe on the function at {:#x}; probe that function's return instead", owner.addr);
                return Err(AttachError::Unpatchable { addr, reason });
            }
            // A jump would overwrite another probe's bytes (tiny functions side by side: the
            // kernel probes each with an int3); one byte is free: an int3 here too.
            let crowded = patch::overlaps(addr, PATCH_LEN as u64) || crate::syscalls::overlaps_pads(addr, PATCH_LEN as u64);
            let s = if crowded { build_trap_site(addr, info, "a jump would overwrite another probe's bytes".into())? } else { build_site(addr, info)? };
            map.insert(addr, s);
            s
        }
    };
    if kind == ProbeKind::Return {
        return_sites(site, info);
    }
    let id = next_id();
    let slot = if kind == ProbeKind::Entry { &site.entry } else { &site.ret };
    let mut new = list(slot).clone();
    new.push((id, handler));
    slot.store(Box::leak(Box::new(new)), Ordering::Release);
    sync_patches(site)?;
    Ok(id)
}

/// Gives the function its bytes back wherever a breakpoint that is not ours (a kernel uprobe
/// registered after we patched it) has been written over a jump of ours; returns the addresses
/// of those sites, which stay unpatched from then on (their probes no longer run). Also arms
/// again the `int3` sites whose `int3` a kernel uprobe took away when it went. The kernel
/// runs the function's first instruction out of line and resumes after it, inside our jump
/// (where a landing put an `int3` for the moment), and when its probe goes it puts back only
/// the first byte: with the function's own bytes behind its `int3`, both work. Called by the
/// agent's link thread every poll, and before each batch of attaches.
pub fn yield_to_foreign_breakpoints() -> Vec<u64> {
    let _patching = PATCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let map = sites().lock().unwrap_or_else(|e| e.into_inner());
    yield_sites(&map)
}

/// See [`yield_to_foreign_breakpoints`]; the caller holds the patch lock.
fn yield_sites(map: &HashMap<u64, &'static Site>) -> Vec<u64> {
    // Every patched site's bytes, in one read.
    let patched: Vec<&Site> = map.values().copied().filter(|s| patched_with_a_jump(s) || armed_trap(s)).collect();
    let now = patch::read_many(&patched.iter().map(|s| s.addr).collect::<Vec<_>>());
    let mut covered = vec![];
    for (s, bytes) in patched.into_iter().zip(now) {
        let Some(b) = bytes else { continue };
        if armed_trap(s) {
            // A kernel uprobe that was there first took the traps while it lasted (the kernel
            // handles an `int3` at its probe's address itself) and wrote the file's byte back
            // when it went: our `int3` again.
            if b[0] == s.original[0] && b[0] != 0xcc {
                let _ = patch::write_code(s.addr, &[0xcc]);
                patch::sync_cores();
            }
        } else if covers_our_jump(s, b) {
            covered.push(s);
        }
    }
    // A debugger's breakpoint (under ptrace) keeps our jump's first byte and puts it back:
    // the jump must stay whole behind it.
    if covered.is_empty() || traced() {
        return vec![];
    }
    covered.into_iter().filter(|s| yield_site(s)).map(|s| s.addr).collect()
}

/// The site is an `int3` of ours, installed.
fn armed_trap(s: &Site) -> bool {
    s.method == Method::Trap && s.installed.load(Ordering::Acquire) == Installed::Stub as u8
}

/// The site is patched with a jump of ours (to its stub or its trampoline).
fn patched_with_a_jump(s: &Site) -> bool {
    s.method != Method::Trap && !s.yielded.load(Ordering::Acquire) && s.installed.load(Ordering::Acquire) != Installed::Original as u8
}

/// `now`, read at the site, is our jump with an `int3` over its first byte.
fn covers_our_jump(s: &Site, now: [u8; PATCH_LEN]) -> bool {
    let ours = if s.installed.load(Ordering::Acquire) == Installed::Stub as u8 { &s.jump } else { &s.to_trampoline };
    now[0] == 0xcc && now[1..] == ours[1..]
}

/// Whether a debugger traces this process (`TracerPid` in /proc/self/status, proc(5)).
fn traced() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).is_some_and(|pid| pid.trim() != "0")
}

/// Gives site `s` (see [`yield_sites`]) its function's bytes back behind the foreign `int3`;
/// whether it did.
fn yield_site(s: &Site) -> bool {
    // A thread the kernel resumes lands after the first instruction: the bytes past it
    // first, then those up to it, its `int3` last of all.
    let first = (s.first_len as usize).min(PATCH_LEN);
    let written = patch::write_code(s.addr + first as u64 + 1, s.original.get(first + 1..).unwrap_or(&[])).and_then(|_| {
        patch::sync_cores();
        patch::write_code(s.addr + 1, &s.original[1..(first + 1).min(PATCH_LEN)])
    });
    patch::sync_cores();
    if written.is_ok() {
        s.installed.store(Installed::Original as u8, Ordering::Release);
        s.yielded.store(true, Ordering::Release);
    }
    written.is_ok()
}

/// Forgets the sites whose code is gone (a library unloaded, maybe another loaded at the same
/// address): their bytes are no longer what the site wrote or kept. Their patch slots are
/// released, so that new probes may patch there afresh; their probes wait in [`FORGOTTEN`].
fn forget_stale_sites(map: &mut HashMap<u64, &'static Site>) {
    // Where this process's memory cannot be read, nothing is taken for gone.
    let _ = patch::with_self_mem(false, |mem| {
        let sites = forget_sites_gone_from(mem, map);
        if !sites.is_empty() {
            let mut forgotten = FORGOTTEN.lock().unwrap_or_else(|e| e.into_inner());
            for s in sites {
                forgotten.extend(list(&s.entry).iter().chain(list(&s.ret).iter()).map(|(id, _)| *id));
            }
        }
        Ok(())
    });
}

/// Probes of sites forgotten since [`forget_unloaded`] last said which.
static FORGOTTEN: Mutex<Vec<ProbeId>> = Mutex::new(Vec::new());

/// The probes whose code went with its library (`dlclose`, or an unmap) since the last call:
/// forgotten, so that the same function in a library loaded again, at that address or any
/// other, is patched afresh when they are attached again. Their handlers are not called from
/// then on.
pub fn forget_unloaded() -> Vec<ProbeId> {
    let _patching = PATCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut map = sites().lock().unwrap_or_else(|e| e.into_inner());
    if !map.is_empty() {
        // A kernel uprobe's `int3` over a jump of ours is not the code gone.
        yield_sites(&map);
        forget_stale_sites(&mut map);
    }
    std::mem::take(&mut *FORGOTTEN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// [`forget_stale_sites`], reading the code through `mem`; returns the sites forgotten. A
/// site's code is gone when its address is unmapped or holds another file now, or when it
/// holds the same file with none of the site's bytes left (the library unloaded and loaded
/// again at the same address). Bytes of the same file that are neither ours nor the file's
/// (another tool's breakpoint over our jump or over a patched `ret`, a debugger's) are not
/// the code gone: the site stays, and so do its probes.
fn forget_sites_gone_from(mem: &std::fs::File, map: &mut HashMap<u64, &'static Site>) -> Vec<&'static Site> {
    use std::os::unix::fs::FileExt;
    let maps = crate::procmaps::mappings();
    let reloaded = |s: &Site| {
        let n = s.method.len();
        let mut b = [0u8; PATCH_LEN];
        match mem.read_exact_at(&mut b[..n], s.addr) {
            // Unreadable: unmapped meanwhile.
            Err(_) => true,
            Ok(()) => !s.yielded.load(Ordering::Acquire) && s.installed.load(Ordering::Acquire) != Installed::Original as u8 && b[..n] == s.original[..n],
        }
    };
    let gone = |s: &Site| match (mapped_at(&maps, s.addr), &s.mapped_from) {
        (None, Some(_)) => true,
        (Some(now), Some(then)) if now != *then => true,
        _ => reloaded(s),
    };
    let stale: Vec<u64> = map.iter().filter(|(_, s)| gone(s)).map(|(a, _)| *a).collect();
    let mut forgotten = vec![];
    for a in stale {
        if let Some(s) = map.remove(&a) {
            patch::release_site(s.slot);
            for r in s.returns.get().into_iter().flatten() {
                patch::release_site(r.slot);
            }
            forgotten.push(s);
        }
    }
    forgotten
}

/// How many `ret`s of the function at `addr` are patched for its return probes (0: its return
/// probes replace the return address at entry).
pub fn patched_returns(addr: u64) -> usize {
    sites().lock().unwrap_or_else(|e| e.into_inner()).get(&addr).and_then(|s| s.returns.get()).map_or(0, Vec::len)
}

/// The first byte of the instruction at `addr` as the program has it: the site's saved byte
/// where a probe is patched over it, the file's byte under another tool's `int3` (a kernel
/// uprobe's, maybe still on its way out), else what is there (None if unreadable).
pub fn original_first_byte(addr: u64) -> Option<u8> {
    if let Some(site) = sites().lock().unwrap_or_else(|e| e.into_inner()).get(&addr) {
        return Some(site.original[0]);
    }
    let now = read_word(addr & !7).map(|w| w.to_le_bytes()[(addr & 7) as usize])?;
    if now != 0xcc {
        return Some(now);
    }
    Some(file_byte(addr).unwrap_or(now))
}

/// The byte of the mapped file at `addr` (None for anonymous memory, or a file that is not the
/// one mapped).
fn file_byte(addr: u64) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let maps = crate::procmaps::mappings();
    let m = maps.iter().find(|m| m.start <= addr && addr < m.end)?;
    let mut b = [0u8; 1];
    crate::procmaps::open_mapped_file(m)?.read_exact_at(&mut b, addr - m.start + m.offset).ok()?;
    Some(b[0])
}

/// How the site at `addr` is patched, once a probe is attached there, with a remark (why no
/// jump fits, or what the jump lacks; empty if nothing).
pub fn site_method(addr: u64) -> Option<(Method, String)> {
    sites().lock().unwrap_or_else(|e| e.into_inner()).get(&addr).map(|s| (s.method, s.remark.clone()))
}

/// The vector registers the stubs of the site at `addr` keep, in words (e.g. "xmm0-7 (512
/// bits) + xmm9 (128 bits) at entry, ..."): at its entry and, for a function entry, at its
/// patched returns.
pub fn site_vectors(addr: u64) -> Option<String> {
    let map = sites().lock().unwrap_or_else(|e| e.into_inner());
    let s = map.get(&addr)?;
    if s.method == Method::Trap {
        return Some("all (the kernel saves them around the trap)".into());
    }
    if !s.at_entry {
        return Some(VectorSave::at(PointKind::MidFunction, s.needs, s.named).describe());
    }
    let entry = VectorSave::at(PointKind::FunctionEntry, s.needs, s.named).describe();
    Some(match s.returns.get() {
        Some(r) if !r.is_empty() => format!("{entry} at entry, {} at returns", VectorSave::at(PointKind::Return, s.needs, s.named).describe()),
        Some(_) => format!("{entry} at entry, all at returns (the return address replaced)"),
        None => format!("{entry} at entry"),
    })
}

/// Detaches a handler; restores the original bytes when it was the site's last.
pub fn detach(id: ProbeId) -> Result<(), AttachError> {
    let _patching = PATCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let map = sites().lock().unwrap_or_else(|e| e.into_inner());
    for site in map.values() {
        for slot in [&site.entry, &site.ret] {
            let cur = list(slot);
            if cur.iter().any(|(i, _)| *i == id) {
                let new: HandlerList = cur.iter().filter(|(i, _)| *i != id).cloned().collect();
                slot.store(Box::leak(Box::new(new)), Ordering::Release);
                return sync_patches(site);
            }
        }
    }
    Err(AttachError::NoSuchProbe(id.0))
}

/// Runs `f` as a hit would run its handlers (with the nesting level), unless this thread's
/// state says a hit cannot run now.
pub fn run_as_hit(f: impl FnOnce(usize)) {
    if let Admission::Run(level, before) = admit() {
        f(level);
        leave(before);
    }
}

/// Whether this thread's thread pointer is glibc's (its thread control block starts with a
/// pointer to itself, and holds another at 16 bytes: `tcbhead_t`'s `tcb` and `self`), read
/// without any thread-local of ours: a runtime with thread-locals of its own (Go's without cgo)
/// points it elsewhere, where ours are out of reach.
pub(crate) fn libc_thread_pointer() -> bool {
    let (tcb, me): (u64, u64);
    // SAFETY: reads two words at the thread pointer, which the thread's runtime keeps mapped
    // (the code that set it reads its own thread-locals there).
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", "mov {}, qword ptr fs:[16]", out(reg) tcb, out(reg) me, options(nostack, readonly, preserves_flags)) };
    tcb != 0 && tcb == me
}

/// Whether this thread's current flow is running a probe handler or the agent's own work.
pub fn in_probe() -> bool {
    thread().state.get().busy
}

/// Reads this thread's signal stack again (`sigaltstack(2)`) into what the stubs compare a hit's
/// frame with (see `HookThread::alt_stack`): the agent calls it after the application set one
/// (the stack is otherwise read once, when the thread's handler stack is mapped, and a thread
/// may have had its first hit before it set its signal stack).
pub fn signal_stack_changed() {
    let mut now = [0u64; 3];
    // SAFETY: sigaltstack(2) writing the current stack_t (24 bytes) into our array; our own
    // call, in the application's flow (not the application's to see).
    if unsafe { crate::syscalls::own_call(libc::SYS_sigaltstack, [0, now.as_mut_ptr() as u64, 0, 0, 0, 0]) } == 0 {
        thread().alt_stack.set(now);
    }
}

/// Runs `f` with probes silenced on this thread (the agent's own work must not show up in the
/// programs' counts, e.g. its allocations when malloc is probed); a signal handler that
/// interrupts it has its hits counted as misses (what `f` holds may be what they need).
pub fn without_probes<R>(f: impl FnOnce() -> R) -> R {
    let t = thread();
    let before = t.state.get();
    let flow = (t.flow_frame.get(), t.flow_rsp.get());
    set_state(t, ThreadState { busy: true, agent: true, ..before });
    let r = f();
    // A handler stack a stub mapped in our own work (`leave` gives the thread its `warm` back).
    register_handler_stack();
    leave(before);
    compiler_fence(Ordering::SeqCst);
    set_flow(t, flow);
    r
}

/// Runs an application's signal handler as a flow of its own: probes it hits run at the next
/// nesting level (or count as misses), instead of being taken for calls made by the handler it
/// interrupted. Called by the agent's wrapper around every handler the application installs.
///
/// Its hits run on the handler's own stack: it may be a signal stack (`sigaltstack(2)`), which
/// the kernel takes as free again once `rsp` leaves it, so a second signal would be delivered
/// over the live frames of the first. A signal that lands on the thread's handler stack (one
/// without a signal stack, during a hit) has its handler run on the application's stack instead,
/// below the interrupted stub's frame, where it would have run without us: a handler that takes
/// its own stack pointer for a point on the thread's stack (a conservative garbage collector
/// scanning it, for one) finds one.
pub fn in_signal_handler<R>(f: impl FnOnce() -> R) -> R {
    let t = thread();
    let before = t.state.get();
    // A hit the signal found entering (a fault in its stub) is that flow's to admit.
    let entering = t.entering.replace(0);
    let in_use = t.stack_in_use.get();
    // The selector as the interrupted flow had it (code of ours may hold it at ALLOW with the
    // thread not busy: the routine that maps a handler stack).
    let selector = t.selector.get();
    let app_call = t.app_call.replace(0);
    // The handler's own calls are not the one it interrupted.
    let call_regs = t.call_regs.replace(0);
    // Signals deferred by the flow this handler interrupted stay blocked until that flow
    // releases them (the handler's return puts the mask back): flows inside the handler
    // release only their own.
    let outer = t.deferred.replace(0);
    // A restart of the interrupted call is that call's to take (see `note_restart`).
    let interruption = t.interruption.replace(0);
    let flow = (t.flow_frame.get(), t.flow_rsp.get());
    // A `vfork` call the handler makes notes its own state: the interrupted flow may be about
    // to make one that noted its own already.
    let vfork_parent = t.vfork_parent.get();
    let signal_frame = t.signal_frame.get();
    // Freed once it is gone only if no other handler runs and nothing busy held the handler
    // stack as it began: what holds it for a thread that is not busy is our work around the
    // application's own call the signal interrupted (a rewritten site's dispatcher, our SIGSYS
    // handler: a jump out of a blocking read abandons it) or a stub one instruction from taking
    // the stack or letting it go (signals that land elsewhere meanwhile wait: see
    // `signals::defer`), which a jump from the handler abandons as well.
    let sole = signal_frame == 0 && (in_use == 0 || !before.busy);
    t.stack_in_use.set(1);
    set_state(t, ThreadState { busy: false, ..before });
    // Where the handler runs: what a later hit compares its frame with (see `signal_frame`).
    let run = || {
        t.signal_frame.set(stack_pointer() & !1 | sole as u64);
        f()
    };
    let r = match interrupted_stub_frame(t) {
        Some(frame) => on_stack_leaving((frame - 128) & !15, 0, |_| run()),
        None => run(),
    };
    leave(before);
    t.selector.set(selector);
    t.stack_in_use.set(in_use);
    t.app_call.set(app_call);
    t.call_regs.set(call_regs);
    t.deferred.set(t.deferred.get() | outer);
    t.interruption.set(interruption);
    t.vfork_parent.set(vfork_parent);
    t.entering.set(entering);
    t.signal_frame.set(signal_frame);
    compiler_fence(Ordering::SeqCst);
    set_flow(t, flow);
    r
}

/// Where the stub this thread's handler stack serves left the application's stack (its frame's
/// lowest address), if the current stack pointer is on the handler stack.
fn interrupted_stub_frame(t: &HookThread) -> Option<u64> {
    let (top, here) = (t.stack_top.get(), stack_pointer());
    if top <= NO_HANDLER_STACK || here >= top - 16 || here < top - HANDLER_STACK as u64 {
        return None;
    }
    // SAFETY: the handler stack's top 16 bytes, mapped while the thread has its stack; the stub
    // stores its frame there before it moves onto it, and we are on it.
    Some(unsafe { std::ptr::read_volatile((top - 8) as *const u64) })
}

/// Runs `f` with the stack pointer at `new_sp` (16-aligned), on whatever stack that is, and
/// comes back; `f` gets the stack pointer it left, below which nothing of ours is live, which
/// is also written at `slot` first unless that is 0.
fn on_stack_leaving<R, F: FnOnce(u64) -> R>(new_sp: u64, slot: u64, f: F) -> R {
    struct Job<F, R> {
        f: Option<F>,
        r: Option<std::thread::Result<R>>,
    }
    extern "C" fn trampoline<F: FnOnce(u64) -> R, R>(job: *mut Job<F, R>, left: u64) {
        // SAFETY: the Job below, alive across the call; only this call touches it.
        let job = unsafe { &mut *job };
        if let Some(f) = job.f.take() {
            // No unwinding through the frames of the stack switch.
            job.r = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(left))));
        }
    }
    let mut job = Job { f: Some(f), r: None };
    // SAFETY: `new_sp` lies below everything live on its stack, and `slot` is 0 or a writable
    // word (the caller says so). The call
    // runs the trampoline there with the Job's address and the stack pointer left (nothing
    // below it is live: the block may push, so no red zone is in use) and comes back with
    // every callee-saved register kept (r12 holds our stack pointer across it); caller-saved
    // ones are declared clobbered.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsi, rsp",
            "test {slot}, {slot}",
            "jz 2f",
            "mov qword ptr [{slot}], rsp",
            "2:",
            "mov rsp, {new_sp}",
            "call {tramp}",
            "mov rsp, r12",
            slot = in(reg) slot,
            new_sp = in(reg) new_sp,
            tramp = in(reg) trampoline::<F, R> as extern "C" fn(*mut Job<F, R>, u64) as usize,
            in("rdi") &mut job as *mut Job<F, R>,
            out("rsi") _,
            out("r12") _,
            clobber_abi("C"),
        );
    }
    match job.r {
        Some(Ok(r)) => r,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => unreachable!("the trampoline ran"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_heal_target(a: u64, b: u64) -> u64 {
        let mut x = a;
        for i in 0..b {
            x = x.wrapping_mul(29).wrapping_add(i);
        }
        std::hint::black_box(x)
    }

    /// Counts hits, and those that ran on the thread's handler stack.
    #[derive(Default)]
    struct Stacks(AtomicU64, AtomicU64);

    impl ProbeHandler for Stacks {
        fn on_hit(&self, _regs: &PtRegs, _level: usize) -> Option<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            if on_handler_stack_at(thread(), stack_pointer()) {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    }

    /// Runs a signal handler that never returns (as one leaving by `siglongjmp`) `depth`
    /// frames of 4 KiB down the stack.
    #[inline(never)]
    fn handler_left_by_a_jump(depth: u32) {
        let pad = std::hint::black_box([0u8; 4096]);
        if depth > 0 {
            handler_left_by_a_jump(depth - 1);
        } else {
            let left = std::panic::catch_unwind(|| in_signal_handler(|| std::panic::resume_unwind(Box::new("jump"))));
            assert!(left.is_err());
        }
        std::hint::black_box(pad);
    }

    /// A signal handler marks the handler stack in use while it runs; one that left by a jump
    /// left it marked, and every later hit of the thread ran on the application's stack. The
    /// next hit above where the handler ran frees it: the hits after it run there again.
    #[test]
    fn a_handler_left_by_a_jump_leaves_the_handler_stack_free() {
        let addr = bpftime_attach_heal_target as *const () as u64;
        let h = Arc::new(Stacks::default());
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let id = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap();
        let call = || std::hint::black_box(bpftime_attach_heal_target)(3, 4);
        call();
        call();
        assert_eq!((h.0.load(Ordering::Relaxed), h.1.load(Ordering::Relaxed)), (2, 2), "hits on the handler stack");
        handler_left_by_a_jump(16);
        assert_eq!(thread().stack_in_use.get(), 1, "left marked by the handler");
        call();
        call();
        assert_eq!((h.0.load(Ordering::Relaxed), h.1.load(Ordering::Relaxed)), (4, 3), "the hit after the first above it on the handler stack again");
        detach(id).unwrap();
    }

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_held_target(a: u64, b: u64) -> u64 {
        let mut x = a;
        for i in 0..b {
            x = x.wrapping_mul(23).wrapping_add(i);
        }
        std::hint::black_box(x)
    }

    /// A handler left by a jump inside another handler, which interrupted work on the handler
    /// stack (a stub's, marked in use): the hits of the outer handler after the jump, above
    /// the inner one's frame, leave the stack to that work (freeing it would have the next hit
    /// write over its frames).
    #[test]
    fn a_handler_left_by_a_jump_inside_another_frees_nothing_held() {
        let addr = bpftime_attach_held_target as *const () as u64;
        let h = Arc::new(Stacks::default());
        let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
        let id = attach(addr, info, ProbeKind::Entry, h.clone()).unwrap();
        let call = || std::hint::black_box(bpftime_attach_held_target)(3, 4);
        call();
        let t = thread();
        // As a stub holding the handler stack would have it.
        t.stack_in_use.set(1);
        in_signal_handler(|| {
            handler_left_by_a_jump(16);
            call();
            call();
            assert_eq!(t.stack_in_use.get(), 1, "still held");
        });
        assert_eq!(t.stack_in_use.get(), 1, "held until its user lets go");
        t.stack_in_use.set(0);
        assert_eq!(h.1.load(Ordering::Relaxed), 1, "only the first hit on the handler stack");
        detach(id).unwrap();
    }

    /// Calls libc through its GOT (as Rust does): its callers cannot rely on call-clobbered
    /// registers.
    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_calls_libc(x: u64) -> u64 {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() as u64 + x }
    }

    unsafe extern "C" {
        /// The assembly leaf of the crate's tests (lib.rs).
        fn bpftime_attach_leaf(a: u64, b: u64) -> u64;
    }

    /// The widest stubs (every register kept, checked on the way out: mid-function sites, the
    /// own return stubs of functions that return twice) fit the room they are given on this
    /// machine; one that did not would leave its probes refused.
    #[test]
    fn the_widest_stubs_fit_their_room() {
        assert!(own_return_stubs().is_some(), "the own return stubs fit their 2 KiB each");
        let (stub, _) = entry_stub(0x1000, 0x2000, 0x4000_1000, 0x4000_0000, PointKind::MidFunction, VectorSave::everything()).unwrap();
        assert!(stub.len() <= TRAMPOLINE_AT as usize, "a mid-function stub takes {} bytes", stub.len());
    }

    /// Stubs keep only the ABI's registers where the function calls code its compiler could
    /// not see, and every register its module names elsewhere; at entry, only the argument
    /// registers the body may read, and the results.
    #[test]
    fn kept_registers_follow_what_callers_may_rely_on() {
        let size = |name: &str| crate::resolve(&crate::Target::parse(&format!("/proc/self/exe:{name}")).unwrap()).unwrap().function_size;
        let opaque = bpftime_attach_calls_libc as *const () as u64;
        let module = crate::module_code::module_at(opaque);
        let needs = |addr, name| body_needs(addr, size(name), &[], module.as_ref());
        assert_eq!(
            needs(opaque, "bpftime_attach_calls_libc"),
            BodyNeeds { callers: Kept::Abi, arguments: 0xff, low_halves: module.as_ref().unwrap().kept_by_other_conventions() }
        );
        let leaf = bpftime_attach_leaf as *const () as u64;
        // lea, imul, add, ret: no vector argument is read, xmm0-1 pass through as results.
        assert_eq!(
            needs(leaf, "bpftime_attach_leaf"),
            BodyNeeds { callers: Kept::All, arguments: 0b11, low_halves: module.as_ref().unwrap().kept_by_other_conventions() }
        );
        assert_eq!(body_needs(opaque, 0, &[], module.as_ref()), BodyNeeds::UNKNOWN, "size unknown");
        assert_eq!(body_needs(opaque, size("bpftime_attach_calls_libc"), &[], None).callers, Kept::All, "module unknown");
        let float = crate::tests::bpftime_attach_float_target as *const () as u64;
        assert_eq!(needs(float, "bpftime_attach_float_target").arguments, 0xff, "eight double arguments read");
        assert_eq!(std::hint::black_box(bpftime_attach_calls_libc)(1), std::process::id() as u64 + 1);
    }
}
