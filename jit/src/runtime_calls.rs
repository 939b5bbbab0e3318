//! The out-of-line paths JIT code calls into: the slow memory check and fault recording.
//!
//! Both are `extern "C"`, never panic, and only touch the `RunState` they are given.

use bpftime_vm::exec::{Fault, RunState};
use bpftime_vm::insn::MemSize;
use bpftime_vm::Program;

/// `jit_raise` `what`: the loop budget is spent.
pub(crate) const RAISE_LOOP_BUDGET: u64 = 1;
/// `jit_raise` `what`: an atomic access is misaligned (size in bits 8..16, address in `arg`).
pub(crate) const RAISE_MISALIGNED: u64 = 2;
/// `jit_raise` `what`: `callx` named no helper (id in `arg`).
pub(crate) const RAISE_UNKNOWN_HELPER: u64 = 3;
/// `jit_raise` `what`: a helper stopped the run; record where if it faulted.
pub(crate) const RAISE_LOCATE: u64 = 4;

/// Runs the program in the interpreter, which checks every access of a run whose context
/// does not meet the needs of the proven ones (see `FnTranslator::context_guard`).
pub(crate) extern "C" fn jit_fallback(program: *const Program, state: &mut RunState, r1: u64, r2: u64, frame_pointer: u64) -> u64 {
    // SAFETY: the JIT code passes the program it was compiled from, which its `JitProgram`
    // keeps alive (an `Arc`) as long as the code exists.
    let program = unsafe { &*program };
    bpftime_vm::interp::interpret(program, r1, r2, frame_pointer, state)
}

/// Checks the access `state.check_addr`/`check_what` describe (see [`RunState::check_what`]),
/// which missed the inline regions; records the fault in `state` when it is not allowed (the JIT
/// code then finds a non-zero status), or for a fault-tolerant load (`what` bit 9), points
/// `check_addr` at a zero for it to read.
pub(crate) extern "C" fn jit_check_access(state: &mut RunState) {
    let (addr, what) = (state.check_addr, state.check_what);
    let bytes = (what & 0xff) as u8;
    let write = (what >> 8) & 1 != 0;
    let size = match bytes {
        1 => MemSize::B,
        2 => MemSize::H,
        4 => MemSize::W,
        _ => MemSize::DW,
    };
    if !state.access_ok(addr, size, write) {
        if (what >> 9) & 1 != 0 {
            // A fault-tolerant load (a BTF pointer's): it reads a zero instead.
            state.check_addr = std::ptr::addr_of!(ZERO) as u64;
        } else {
            state.fault((what >> 16) as usize, Fault::OutOfBounds { addr, size: bytes, write });
        }
    }
}

/// What a fault-tolerant load that finds no memory reads.
static ZERO: u64 = 0;

/// Calls [`jit_check_access`] with its System V argument already in place, saving and
/// restoring every register the System V ABI lets it clobber, so that JIT code can call it with
/// Cranelift's `preserve_all` convention: a slow-path call then costs the hot path nothing
/// (no spills around it).
///
/// JIT code is integer-only, so only general-purpose registers need saving. On entry the stack
/// is 8 mod 16 (after the return address); nine pushes make it 16-aligned for the call.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub(crate) extern "C" fn jit_check_access_preserving_all() {
    core::arch::naked_asm!(
        "push rax",
        "push rcx",
        "push rdx",
        "push rsi",
        "push rdi",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "call {check}",
        "pop r11",
        "pop r10",
        "pop r9",
        "pop r8",
        "pop rdi",
        "pop rsi",
        "pop rdx",
        "pop rcx",
        "pop rax",
        "ret",
        check = sym jit_check_access,
    )
}

/// The slow-path check as JIT code calls it: `preserve_all` on x86_64, System V elsewhere.
#[cfg(target_arch = "x86_64")]
pub(crate) const CHECK_ACCESS: *const () = jit_check_access_preserving_all as *const ();
/// The slow-path check as JIT code calls it: `preserve_all` on x86_64, System V elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const CHECK_ACCESS: *const () = jit_check_access as *const ();

/// Calling convention of [`CHECK_ACCESS`].
#[cfg(target_arch = "x86_64")]
pub(crate) const CHECK_ACCESS_CALL_CONV: cranelift_codegen::isa::CallConv = cranelift_codegen::isa::CallConv::PreserveAll;
/// Calling convention of [`CHECK_ACCESS`].
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const CHECK_ACCESS_CALL_CONV: cranelift_codegen::isa::CallConv = cranelift_codegen::isa::CallConv::SystemV;

/// Records a fault (or the location of a helper's fault) at instruction `pc`.
pub(crate) extern "C" fn jit_raise(state: &mut RunState, pc: u64, what: u64, arg: u64) {
    let pc = pc as usize;
    match what & 0xff {
        RAISE_LOOP_BUDGET => state.fault(pc, Fault::LoopBudget),
        RAISE_MISALIGNED => state.fault(pc, Fault::Misaligned { addr: arg, size: (what >> 8) as u8 }),
        RAISE_UNKNOWN_HELPER => state.fault(pc, Fault::UnknownHelper { id: arg }),
        _ => state.locate_fault(pc),
    }
}
