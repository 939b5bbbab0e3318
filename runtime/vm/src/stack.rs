//! Stack stores nothing reads, and map keys taken from the register stored instead of the
//! stack. On the GPU a thread's stack is local memory, and a 4-byte store per thread of a map
//! key is write traffic to DRAM (with 2^24 threads, 64 MiB: more than the L2 holds) that costs
//! a bandwidth-bound kernel as much as its own stores do; on the CPU a store just before a
//! locked instruction (an atomic add into a map value whose lookup was inlined) makes it wait
//! for the store to reach the cache.
//!
//! Per eBPF function: a forward pass finds the registers that hold a known offset into the
//! frame (`r10 + c`); a backward pass finds the frame bytes some later instruction may read.
//! Only what is certain counts as exact: a load, atomic or helper argument that might reach the
//! stack at an unknown place reads all of it, a call of a local function or an unknown helper
//! reads all of it, and only a proven, in-bounds store at a known offset writes (kills) its
//! bytes. A store is dead when none of its bytes is read before they are stored again or the
//! run ends. A frame outlives its function's return (the next call of the function, a
//! callback's next iteration, or its caller, through an address it computes, may read it), so
//! only the exit of a program's entry function, which ends the run, reads nothing; a run
//! reading stack bytes it did not write finds whatever is there (on the GPU a thread's local
//! memory is not kept from one launch to the next). An inlined array lookup whose key was stored in the same basic block takes
//! the key from a register copy of the stored value ([`StackPlan::forwarded`]), which often
//! leaves that store dead.

use crate::analysis::Target;
use crate::insn::{AluOp, CallTarget, Insn, LddwKind, MemSize, Operand, Reg, Width};
use crate::Program;
use std::collections::{HashMap, HashSet};

/// What a helper call reads of the stack, as the translator emits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallUse {
    /// A helper that runs program code (`bpf_loop`'s callbacks), which may reach any frame:
    /// all of it.
    RunsProgram,
    /// An array lookup computed in place with a key known at load time: nothing.
    ConstantKeyLookup,
    /// An array lookup computed in place that reads its 4-byte key at r2, or, where the key was
    /// stored in the same basic block, takes it from the register stored
    /// ([`StackPlan::forwarded`]).
    KeyLookup,
    /// An array lookup computed in place that always reads its 4-byte key at r2.
    ReadsKey,
    /// A helper that reads r1 to r`n` (and through pointers among them).
    Helper(u32),
}

/// What [`plan`] found for one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackPlan {
    /// Stores to leave out.
    pub dead: HashSet<usize>,
    /// Inlined lookups (pc) whose key is the low 32 bits of what the store at the second pc
    /// stored.
    pub forwarded: HashMap<usize, usize>,
}

const FRAME: i64 = crate::exec::FRAME_SIZE as i64;

/// A register's value as far as the stack is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// `r10 + c`.
    Stack(i64),
    /// A constant the program wrote (a number or a map reference): no address of the frame.
    Constant,
    /// Anything, a pointer into the frame included.
    Unknown,
}

impl Val {
    fn join(self, other: Val) -> Val {
        if self == other {
            self
        } else {
            Val::Unknown
        }
    }
}

type Regs = [Val; 11];

/// The frame bytes `[c, c + n)` as offsets below the frame's top (`-FRAME..0`), or None.
fn range(c: i64, n: u64) -> Option<(usize, usize)> {
    let lo = c + FRAME;
    (lo >= 0 && c + n as i64 <= 0).then(|| (lo as usize, lo as usize + n as usize))
}

/// A set of the frame's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bytes([u64; (FRAME as usize).div_ceil(64)]);

impl Bytes {
    const NONE: Bytes = Bytes([0; (FRAME as usize).div_ceil(64)]);
    const ALL: Bytes = Bytes([u64::MAX; (FRAME as usize).div_ceil(64)]);

    fn of(lo: usize, hi: usize) -> Bytes {
        let mut b = Bytes::NONE;
        for i in lo..hi {
            b.0[i / 64] |= 1 << (i % 64);
        }
        b
    }
    fn or(self, o: Bytes) -> Bytes {
        Bytes(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    fn minus(self, o: Bytes) -> Bytes {
        Bytes(std::array::from_fn(|i| self.0[i] & !o.0[i]))
    }
    fn meets(self, o: Bytes) -> bool {
        self.0.iter().zip(o.0).any(|(a, b)| a & b != 0)
    }
}

/// The slots control goes to after `pc`, within `start..end`.
fn successors(insns: &[Insn], pc: usize, end: usize) -> Vec<usize> {
    let next = pc + if matches!(insns[pc], Insn::Lddw { .. }) { 2 } else { 1 };
    let mut out = vec![];
    match insns[pc] {
        Insn::Exit => {}
        Insn::Ja { .. } => out.extend(insns[pc].jump_target(pc).map(|t| t as usize)),
        Insn::Jump { .. } => {
            out.push(next);
            out.extend(insns[pc].jump_target(pc).map(|t| t as usize));
        }
        _ => out.push(next),
    }
    out.retain(|&s| s < end);
    out
}

/// The plan for the function `start..end` of `prog`; `call` says what the helper call at a pc
/// (with its id) reads.
///
/// `ends_run`: the function is the program's entry, whose exit ends the run (not a callback,
/// not called by another function).
pub fn plan(prog: &Program, start: usize, end: usize, ends_run: bool, call: impl Fn(usize, u32) -> CallUse) -> StackPlan {
    let insns = prog.insns();
    // Forward: registers holding frame offsets, before each slot.
    let mut before: Vec<Option<Regs>> = vec![None; end - start];
    let mut entry = [Val::Unknown; 11];
    entry[10] = Val::Stack(0);
    before[0] = Some(entry);
    let mut work = vec![start];
    while let Some(pc) = work.pop() {
        let Some(mut regs) = before[pc - start] else { continue };
        step(&mut regs, insns[pc]);
        for s in successors(insns, pc, end) {
            let merged = match before[s - start] {
                None => regs,
                Some(old) => std::array::from_fn(|i| old[i].join(regs[i])),
            };
            if before[s - start] != Some(merged) {
                before[s - start] = Some(merged);
                work.push(s);
            }
        }
    }
    let at = |pc: usize, r: Reg| before[pc - start].map_or(Val::Unknown, |regs| regs[r.num() as usize]);
    let exact = |pc: usize, base: Reg, off: i16, size: MemSize| match at(pc, base) {
        Val::Stack(c) => range(c + off as i64, size.bytes() as u64),
        _ => None,
    };
    // A memory access that certainly misses the frame.
    let elsewhere = |pc: usize| {
        let a = prog.access(pc);
        a.proven && a.target != Target::Stack
    };
    let jump_targets: HashSet<usize> = (start..end).filter_map(|pc| insns[pc].jump_target(pc)).map(|t| t as usize).collect();
    // Keys forwarded from a store in the same basic block.
    let mut forwarded = HashMap::new();
    for pc in start..end {
        let Insn::Call(CallTarget::Helper(id)) = insns[pc] else { continue };
        if call(pc, id) != CallUse::KeyLookup {
            continue;
        }
        let Val::Stack(c) = at(pc, arg(2)) else { continue };
        let Some(key) = range(c, 4) else { continue };
        let key = Bytes::of(key.0, key.1);
        let mut p = pc;
        while p > start && !jump_targets.contains(&p) {
            p -= 1;
            if matches!(insns[p], Insn::LddwHigh) {
                continue;
            }
            let writes = match insns[p] {
                Insn::Store { size, base, off, src } if !elsewhere(p) => match exact(p, base, off, size) {
                    Some((lo, _)) if lo == key_lo(c) && size.bytes() >= 4 && prog.access(p).proven => {
                        if matches!(src, Operand::Reg(_) | Operand::Imm(_)) {
                            forwarded.insert(pc, p);
                        }
                        break;
                    }
                    Some((lo, hi)) => Bytes::of(lo, hi).meets(key),
                    None => true,
                },
                Insn::Atomic { base, off, size, .. } if !elsewhere(p) => exact(p, base, off, size).is_none_or(|(lo, hi)| Bytes::of(lo, hi).meets(key)),
                Insn::Call(_) | Insn::CallReg(_) => true,
                _ => false,
            };
            if writes {
                break;
            }
        }
    }
    // Backward: frame bytes read later, after each slot.
    let mut live_in: Vec<Bytes> = vec![Bytes::NONE; end - start];
    let uses_kills = |pc: usize| -> (Bytes, Bytes) {
        match insns[pc] {
            Insn::Load { size, base, off, .. } if !elsewhere(pc) => (exact(pc, base, off, size).map_or(Bytes::ALL, |(lo, hi)| Bytes::of(lo, hi)), Bytes::NONE),
            Insn::Atomic { size, base, off, .. } if !elsewhere(pc) => {
                (exact(pc, base, off, size).map_or(Bytes::ALL, |(lo, hi)| Bytes::of(lo, hi)), Bytes::NONE)
            }
            Insn::Store { size, base, off, .. } if !elsewhere(pc) && prog.access(pc).proven => {
                (Bytes::NONE, exact(pc, base, off, size).map_or(Bytes::NONE, |(lo, hi)| Bytes::of(lo, hi)))
            }
            Insn::Exit if !ends_run => (Bytes::ALL, Bytes::NONE),
            Insn::Call(CallTarget::Helper(id)) => match call(pc, id) {
                CallUse::RunsProgram => (Bytes::ALL, Bytes::NONE),
                CallUse::ConstantKeyLookup => (Bytes::NONE, Bytes::NONE),
                CallUse::KeyLookup if forwarded.contains_key(&pc) => (Bytes::NONE, Bytes::NONE),
                CallUse::KeyLookup | CallUse::ReadsKey => (exact(pc, arg(2), 0, MemSize::W).map_or(Bytes::ALL, |(lo, hi)| Bytes::of(lo, hi)), Bytes::NONE),
                CallUse::Helper(n) => {
                    let may_point = (1..=n.min(5) as u8).any(|i| at(pc, arg(i)) != Val::Constant);
                    (if may_point { Bytes::ALL } else { Bytes::NONE }, Bytes::NONE)
                }
            },
            Insn::Call(_) | Insn::CallReg(_) => (Bytes::ALL, Bytes::NONE),
            _ => (Bytes::NONE, Bytes::NONE),
        }
    };
    let mut changed = true;
    while changed {
        changed = false;
        for pc in (start..end).rev() {
            if matches!(insns[pc], Insn::LddwHigh) || before[pc - start].is_none() {
                continue;
            }
            let out = successors(insns, pc, end).into_iter().fold(Bytes::NONE, |acc, s| acc.or(live_in[s - start]));
            let (uses, kills) = uses_kills(pc);
            let new = uses.or(out.minus(kills));
            if new != live_in[pc - start] {
                live_in[pc - start] = new;
                changed = true;
            }
        }
    }
    let mut dead = HashSet::new();
    for pc in start..end {
        let Insn::Store { size, base, off, .. } = insns[pc] else { continue };
        if before[pc - start].is_none() || elsewhere(pc) || !prog.access(pc).proven {
            continue;
        }
        let Some((lo, hi)) = exact(pc, base, off, size) else { continue };
        let out = successors(insns, pc, end).into_iter().fold(Bytes::NONE, |acc, s| acc.or(live_in[s - start]));
        if !out.meets(Bytes::of(lo, hi)) {
            dead.insert(pc);
        }
    }
    StackPlan { dead, forwarded }
}

/// Register r`n` (an argument register).
fn arg(n: u8) -> Reg {
    Reg::new(n).unwrap_or(Reg::R0)
}

/// The offset in the frame (from its bottom) of a key at `r10 + c`.
fn key_lo(c: i64) -> usize {
    (c + FRAME) as usize
}

/// Registers after `insn`.
fn step(regs: &mut Regs, insn: Insn) {
    let val = |regs: &Regs, o: Operand| match o {
        Operand::Reg(r) => regs[r.num() as usize],
        Operand::Imm(_) => Val::Constant,
    };
    match insn {
        Insn::Alu { width: Width::W64, op: AluOp::Mov, dst, src } => regs[dst.num() as usize] = val(regs, src),
        Insn::Alu { width: Width::W64, op: op @ (AluOp::Add | AluOp::Sub), dst, src: Operand::Imm(i) } => {
            let d = &mut regs[dst.num() as usize];
            *d = match *d {
                Val::Stack(c) => Val::Stack(if op == AluOp::Add { c + i as i64 } else { c - i as i64 }),
                Val::Constant => Val::Constant,
                _ => Val::Unknown,
            };
        }
        Insn::Alu { dst, src, .. } => {
            let both = regs[dst.num() as usize] == Val::Constant && val(regs, src) == Val::Constant;
            regs[dst.num() as usize] = if both { Val::Constant } else { Val::Unknown };
        }
        Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => {
            if regs[dst.num() as usize] != Val::Constant {
                regs[dst.num() as usize] = Val::Unknown;
            }
        }
        Insn::Lddw { dst, kind, .. } => regs[dst.num() as usize] = if kind == LddwKind::Func { Val::Unknown } else { Val::Constant },
        Insn::Call(_) | Insn::CallReg(_) => {
            for r in regs.iter_mut().take(6) {
                *r = Val::Unknown;
            }
        }
        other => {
            if let Some(r) = other.written_reg() {
                regs[r.num() as usize] = Val::Unknown;
            }
        }
    }
    regs[10] = Val::Stack(0);
}

/// Whether function `index` of `prog` is its entry and nothing else runs it (not a callback,
/// not called by another function): its exit ends the run, so its frame is read by no one
/// after it.
pub fn ends_run(prog: &Program, index: usize) -> bool {
    let f = prog.functions()[index];
    index == 0
        && !f.callback
        && !prog.insns().iter().enumerate().any(|(pc, i)| matches!(i, Insn::Call(CallTarget::Local(off)) if pc as i64 + 1 + *off as i64 == f.start as i64))
}
