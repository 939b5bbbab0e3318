//! The interpreter: the reference semantics of every instruction, kept simple.
//!
//! One loop over decoded instructions. Local calls push a frame that saves r1-r9 and moves
//! r10 down by [`FRAME_SIZE`]; the callee starts with r0 and r6-r9 zeroed, and on return the
//! caller's registers are restored except r0. The JIT behaves the same, so the two agree even
//! on programs that read registers eBPF leaves undefined.

use crate::exec::{back_edge_cost, Engine, Fault, HelperFn, RunState, FRAME_SIZE, MAX_CALL_DEPTH, STATUS_RUNNING};
use crate::insn::{AtomicOp, CallTarget, Insn, LddwKind, MemSize, Operand, Width};
use crate::program::Program;
use crate::semantics::{alu32, alu64, endian};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Interprets a verified program.
#[derive(Clone, Debug)]
pub struct Interpreter {
    program: Arc<Program>,
}

impl Interpreter {
    /// An interpreter for `program`.
    pub fn new(program: Arc<Program>) -> Self {
        Interpreter { program }
    }

    /// The program it runs.
    pub fn program(&self) -> &Program {
        &self.program
    }
}

impl Engine for Interpreter {
    fn execute(&self, r1: u64, r2: u64, frame_pointer: u64, state: &mut RunState) -> u64 {
        interpret(&self.program, r1, r2, frame_pointer, state)
    }

    fn helper_functions(&self) -> &[Option<HelperFn>] {
        self.program.helpers().functions()
    }

    fn call_function(&self, state: &mut RunState, pc: usize, args: [u64; 5]) -> Option<u64> {
        let (f, fp) = self.program.callback_frame(pc, state)?;
        if !state.charge(self.program.functions()[f].len() as u64) {
            return Some(0);
        }
        Some(interpret_at(&self.program, pc, args, fp, state))
    }
}

#[derive(Clone, Copy, Default)]
struct Frame {
    return_pc: usize,
    saved: [u64; 10],
}

fn operand(src: Operand, regs: &[u64; 11], width: Width) -> u64 {
    match (src, width) {
        (Operand::Reg(r), _) => regs[r.index()],
        (Operand::Imm(i), Width::W64) => i as i64 as u64,
        (Operand::Imm(i), Width::W32) => i as u32 as u64,
    }
}

/// Loads `size` bytes at `addr`; the caller has checked the access.
///
/// # Safety
/// `[addr, addr + size)` must be readable memory.
unsafe fn load(addr: u64, size: MemSize, signed: bool) -> u64 {
    let p = addr as *const u8;
    // SAFETY: the caller guarantees the range is readable; unaligned reads are allowed.
    unsafe {
        match (size, signed) {
            (MemSize::B, false) => p.read() as u64,
            (MemSize::H, false) => (p as *const u16).read_unaligned() as u64,
            (MemSize::W, false) => (p as *const u32).read_unaligned() as u64,
            (MemSize::B, true) => p.read() as i8 as i64 as u64,
            (MemSize::H, true) => (p as *const u16).read_unaligned() as i16 as i64 as u64,
            (MemSize::W, true) => (p as *const u32).read_unaligned() as i32 as i64 as u64,
            (MemSize::DW, _) => (p as *const u64).read_unaligned(),
        }
    }
}

/// Stores the low `size` bytes of `v` at `addr`.
///
/// # Safety
/// `[addr, addr + size)` must be writable memory.
unsafe fn store(addr: u64, size: MemSize, v: u64) {
    let p = addr as *mut u8;
    // SAFETY: the caller guarantees the range is writable; unaligned writes are allowed.
    unsafe {
        match size {
            MemSize::B => p.write(v as u8),
            MemSize::H => (p as *mut u16).write_unaligned(v as u16),
            MemSize::W => (p as *mut u32).write_unaligned(v as u32),
            MemSize::DW => (p as *mut u64).write_unaligned(v),
        }
    }
}

/// Performs an atomic operation; returns the old value (zero-extended).
///
/// # Safety
/// `addr` must be writable, aligned to `size`, and only accessed atomically by others.
unsafe fn atomic(addr: u64, size: MemSize, op: AtomicOp, v: u64, expected: u64) -> u64 {
    const O: Ordering = Ordering::SeqCst;
    if size == MemSize::DW {
        // SAFETY: aligned, writable, valid for the run (caller).
        let a = unsafe { AtomicU64::from_ptr(addr as *mut u64) };
        match op {
            AtomicOp::Add => a.fetch_add(v, O),
            AtomicOp::Or => a.fetch_or(v, O),
            AtomicOp::And => a.fetch_and(v, O),
            AtomicOp::Xor => a.fetch_xor(v, O),
            AtomicOp::Xchg => a.swap(v, O),
            AtomicOp::CmpXchg => a.compare_exchange(expected, v, O, O).unwrap_or_else(|old| old),
        }
    } else {
        // SAFETY: as above, for 4 bytes.
        let a = unsafe { AtomicU32::from_ptr(addr as *mut u32) };
        let v = v as u32;
        (match op {
            AtomicOp::Add => a.fetch_add(v, O),
            AtomicOp::Or => a.fetch_or(v, O),
            AtomicOp::And => a.fetch_and(v, O),
            AtomicOp::Xor => a.fetch_xor(v, O),
            AtomicOp::Xchg => a.swap(v, O),
            AtomicOp::CmpXchg => a.compare_exchange(expected as u32, v, O, O).unwrap_or_else(|old| old),
        }) as u64
    }
}

/// Runs `program` from its entry; returns r0 (faults and stops are recorded in `state`).
pub fn interpret(program: &Program, r1: u64, r2: u64, frame_pointer: u64, state: &mut RunState) -> u64 {
    interpret_at(program, 0, [r1, r2, 0, 0, 0], frame_pointer, state)
}

/// Runs the function of `program` starting at slot `start` with r1-r5 = `args`.
pub fn interpret_at(program: &Program, start: usize, args: [u64; 5], frame_pointer: u64, state: &mut RunState) -> u64 {
    let insns = program.insns();
    let mut regs = [0u64; 11];
    regs[1..6].copy_from_slice(&args);
    regs[10] = frame_pointer;
    let mut frames = [Frame::default(); MAX_CALL_DEPTH];
    let mut depth = 0usize;
    let mut pc = start;

    // The proofs of context accesses hold only for a context that meets their needs.
    let proofs = program.context_needs().met(args[0], &state.context_region());
    macro_rules! check {
        ($addr:expr, $size:expr, $write:expr) => {
            if !(proofs && program.access(pc).proven) && !state.access_ok($addr, $size, $write) {
                let fault = Fault::OutOfBounds { addr: $addr, size: $size.bytes() as u8, write: $write };
                state.fault(pc, fault);
                return 0;
            }
        };
    }
    macro_rules! call_helper {
        ($f:expr) => {{
            let f: HelperFn = $f;
            regs[0] = f(regs[1], regs[2], regs[3], regs[4], regs[5], state);
            if state.status != STATUS_RUNNING {
                state.locate_fault(pc);
                return 0;
            }
        }};
    }

    loop {
        let insn = insns[pc];
        match insn {
            Insn::Alu { width: Width::W64, op, dst, src } => {
                let b = operand(src, &regs, Width::W64);
                regs[dst.index()] = alu64(op, regs[dst.index()], b);
            }
            Insn::Alu { width: Width::W32, op, dst, src } => {
                let b = operand(src, &regs, Width::W32);
                regs[dst.index()] = alu32(op, regs[dst.index()] as u32, b as u32) as u64;
            }
            Insn::Neg { width, dst } => {
                let v = regs[dst.index()];
                regs[dst.index()] = match width {
                    Width::W64 => v.wrapping_neg(),
                    Width::W32 => (v as u32).wrapping_neg() as u64,
                };
            }
            Insn::Endian { order, bits, dst } => regs[dst.index()] = endian(order, bits, regs[dst.index()]),
            Insn::Lddw { dst, kind: LddwKind::Func, lo, .. } => {
                // A callback reference: the index of the function's first slot.
                regs[dst.index()] = (pc as i64 + 1 + lo as i64) as u64;
                pc += 1;
            }
            Insn::Lddw { dst, lo, hi, .. } => {
                regs[dst.index()] = (lo as u32 as u64) | ((hi as u32 as u64) << 32);
                pc += 1;
            }
            Insn::LddwHigh => unreachable!("verifier keeps control out of lddw's second slot"),
            Insn::Load { size, signed, dst, base, off } => {
                let addr = regs[base.index()].wrapping_add(off as i64 as u64);
                let access = program.access(pc);
                if access.probe && !(proofs && access.proven) && !state.access_ok(addr, size, false) {
                    // A BTF pointer's fault-tolerant load: nothing there reads 0.
                    regs[dst.index()] = 0;
                } else {
                    check!(addr, size, false);
                    // SAFETY: checked against the run's regions just above (or proven by the verifier).
                    regs[dst.index()] = unsafe { load(addr, size, signed) };
                }
            }
            Insn::Store { size, base, off, src } => {
                let addr = regs[base.index()].wrapping_add(off as i64 as u64);
                check!(addr, size, true);
                let v = operand(src, &regs, Width::W64);
                // SAFETY: checked against the run's writable regions just above.
                unsafe { store(addr, size, v) };
            }
            Insn::Atomic { size, op, fetch, base, off, src } => {
                let addr = regs[base.index()].wrapping_add(off as i64 as u64);
                check!(addr, size, true);
                if addr % size.bytes() as u64 != 0 {
                    state.fault(pc, Fault::Misaligned { addr, size: size.bytes() as u8 });
                    return 0;
                }
                // SAFETY: in a writable region and aligned, checked above.
                let old = unsafe { atomic(addr, size, op, regs[src.index()], regs[0]) };
                if op == AtomicOp::CmpXchg {
                    regs[0] = old;
                } else if fetch {
                    regs[src.index()] = old;
                }
            }
            Insn::Ja { off, .. } => {
                if off < 0 {
                    let cost = back_edge_cost(off as i64);
                    if state.budget < cost {
                        state.fault(pc, Fault::LoopBudget);
                        return 0;
                    }
                    state.budget -= cost;
                }
                pc = (pc as i64 + off as i64) as usize;
            }
            Insn::Jump { width, cond, dst, src, off } => {
                if cond.eval(width, regs[dst.index()], operand(src, &regs, width)) {
                    if off < 0 {
                        let cost = back_edge_cost(off as i64);
                        if state.budget < cost {
                            state.fault(pc, Fault::LoopBudget);
                            return 0;
                        }
                        state.budget -= cost;
                    }
                    pc = (pc as i64 + off as i64) as usize;
                }
            }
            Insn::Call(CallTarget::Helper(id)) => match program.helpers().get(id) {
                Some(h) => call_helper!(h.func),
                // The verifier accepts calls to helpers we lack only where it proved no run
                // reaches them.
                None => {
                    state.fault(pc, Fault::UnknownHelper { id: id as u64 });
                    return 0;
                }
            },
            Insn::CallReg(r) => {
                let id = regs[r.index()];
                match state.helper(id) {
                    Some(f) => call_helper!(f),
                    None => {
                        state.fault(pc, Fault::UnknownHelper { id });
                        return 0;
                    }
                }
            }
            Insn::Call(CallTarget::Local(off)) => {
                // The verifier bounds the depth of call chains by MAX_CALL_DEPTH.
                let mut saved = [0u64; 10];
                saved.copy_from_slice(&regs[1..11]);
                frames[depth] = Frame { return_pc: pc + 1, saved };
                depth += 1;
                // The callee starts with r0 and r6-r9 zeroed (reading them first is undefined
                // in eBPF; both engines define it the same way).
                regs[0] = 0;
                regs[6..10].fill(0);
                regs[10] -= FRAME_SIZE as u64;
                pc = (pc as i64 + 1 + off as i64) as usize;
                continue;
            }
            Insn::Call(CallTarget::Kfunc(_)) => unreachable!("verifier rejects kfunc calls"),
            Insn::Exit => {
                if depth == 0 {
                    return regs[0];
                }
                depth -= 1;
                let f = frames[depth];
                regs[1..11].copy_from_slice(&f.saved);
                pc = f.return_pc;
                continue;
            }
        }
        // A jump to slot 0 left pc at -1 (wrapping): this brings it there.
        pc = pc.wrapping_add(1);
    }
}
