//! The out-of-line paths JIT code calls into: the slow memory check and fault recording.
//!
//! Both are `extern "C"`, never panic, and only touch the `RunState` they are given.

use bpftime_vm::exec::{Fault, RunState};
use bpftime_vm::insn::MemSize;

/// `jit_raise` `what`: the loop budget is spent.
pub(crate) const RAISE_LOOP_BUDGET: u64 = 1;
/// `jit_raise` `what`: an atomic access is misaligned (size in bits 8..16, address in `arg`).
pub(crate) const RAISE_MISALIGNED: u64 = 2;
/// `jit_raise` `what`: `callx` named no helper (id in `arg`).
pub(crate) const RAISE_UNKNOWN_HELPER: u64 = 3;
/// `jit_raise` `what`: a helper stopped the run; record where if it faulted.
pub(crate) const RAISE_LOCATE: u64 = 4;

/// Checks an access that missed both inline regions; records the fault when it is not allowed.
/// Returns 1 when the access may proceed.
pub(crate) extern "C" fn jit_check_access(state: &mut RunState, addr: u64, size_write: u64, pc: u64) -> u64 {
    let bytes = (size_write & 0xff) as u8;
    let write = size_write >> 8 != 0;
    let size = match bytes {
        1 => MemSize::B,
        2 => MemSize::H,
        4 => MemSize::W,
        _ => MemSize::DW,
    };
    if state.access_ok(addr, size, write) {
        1
    } else {
        state.fault(pc as usize, Fault::OutOfBounds { addr, size: bytes, write });
        0
    }
}

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
