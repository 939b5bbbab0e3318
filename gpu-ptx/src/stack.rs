//! Stack stores nothing reads, and map keys taken from the register stored instead of the
//! stack: on the GPU a thread's stack is local memory, and a 4-byte store per thread of a map
//! key is write traffic to DRAM (with 2^24 threads, 64 MiB: more than the L2 holds) that costs
//! a bandwidth-bound kernel as much as its own stores do.
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

use bpftime_vm::analysis::Target;
use bpftime_vm::insn::{AluOp, CallTarget, Insn, LddwKind, MemSize, Operand, Reg, Width};
use bpftime_vm::Program;
use std::collections::{HashMap, HashSet};

/// What a helper call reads of the stack, as the translator emits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallUse {
    /// A helper that runs program code (`bpf_loop`'s callbacks), which may reach any frame:
    /// all of it.
    RunsProgram,
    /// An array lookup computed in place with a key known at load time: nothing.
    ConstantKeyLookup,
    /// An array lookup computed in place that reads its 4-byte key at r2.
    KeyLookup,
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

const FRAME: i64 = bpftime_vm::exec::FRAME_SIZE as i64;

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
                CallUse::KeyLookup => (exact(pc, arg(2), 0, MemSize::W).map_or(Bytes::ALL, |(lo, hi)| Bytes::of(lo, hi)), Bytes::NONE),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bpftime_vm::analysis::Pointee;

    /// `src` verified with map 1 (4-byte keys, 8-byte values) and the GPU's helpers; `lookup` is
    /// what its calls of helper 1 read (every other helper reads its arguments).
    fn plan_of(src: &str, lookup: CallUse) -> (StackPlan, Vec<usize>, Vec<usize>) {
        struct OneMap;
        impl bpftime_vm::LddwResolver for OneMap {
            fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
                Ok(crate::MAP_TAG | lo as u64)
            }
            fn pointee(&self, kind: LddwKind, _lo: i32, _hi: i32) -> Option<Pointee> {
                (kind == LddwKind::MapFd).then_some(Pointee::Map { value_size: 8, key_size: 4, array: None })
            }
        }
        let helpers = crate::std_helpers::standard();
        let raw = bpftime_vm::asm::assemble(src).unwrap();
        let prog = bpftime_vm::verify(&raw, std::sync::Arc::new(helpers.verifier_table()), &OneMap).unwrap();
        let f = prog.functions()[0];
        let plan = plan(&prog, f.start, f.end, true, |_, id| match helpers.get(id) {
            _ if id == 1 => lookup,
            Some(h) if h.runs_program_code() => CallUse::RunsProgram,
            h => CallUse::Helper(h.map_or(5, |h| h.arguments_read())),
        });
        let pcs = |want: fn(&Insn) -> bool| (f.start..f.end).filter(|&pc| want(&prog.insns()[pc])).collect::<Vec<_>>();
        (plan, pcs(|i| matches!(i, Insn::Store { .. })), pcs(|i| matches!(i, Insn::Call(CallTarget::Helper(1)))))
    }

    /// `src` verified as [`plan_of`] verifies it.
    fn verified(src: &str) -> Program {
        struct NoMaps;
        impl bpftime_vm::LddwResolver for NoMaps {
            fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
                Ok(lo as u64)
            }
        }
        let helpers = crate::std_helpers::standard();
        bpftime_vm::verify(&bpftime_vm::asm::assemble(src).unwrap(), std::sync::Arc::new(helpers.verifier_table()), &NoMaps).unwrap()
    }

    const KEY: &str = "*(u32 *)(r10 - 4) = r6\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\n";

    #[test]
    fn a_key_an_inlined_lookup_does_not_read_is_not_stored() {
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}r0 = 0\nexit");
        let (plan, stores, calls) = plan_of(&src, CallUse::ConstantKeyLookup);
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
        assert!(plan.forwarded.is_empty());
        // Read from its register instead of the stack.
        let (plan, stores, calls2) = plan_of(&src, CallUse::KeyLookup);
        assert_eq!(calls, calls2);
        assert_eq!(plan.forwarded, HashMap::from([(calls[0], stores[0])]));
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
    }

    #[test]
    fn stores_something_may_read_stay() {
        // A helper given the key's address reads it.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}r0 = 0\nexit");
        let (plan, ..) = plan_of(&src, CallUse::Helper(2));
        assert!(plan.dead.is_empty() && plan.forwarded.is_empty(), "{plan:?}");
        // Read back after the lookup, on one path.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n{KEY}if r0 == 0 goto +1\nr0 = *(u32 *)(r10 - 4)\nr0 = 0\nexit");
        let (plan, stores, calls) = plan_of(&src, CallUse::KeyLookup);
        assert!(plan.dead.is_empty(), "{plan:?}");
        assert_eq!(plan.forwarded, HashMap::from([(calls[0], stores[0])]));
        // Through a pointer the analysis cannot place: every byte may be read.
        let src = format!("r6 = *(u32 *)(r1 + 0)\n*(u64 *)(r10 - 16) = r6\nr7 = r10\nif r6 == 0 goto +1\nr7 = r1\n{KEY}r0 = *(u8 *)(r7 - 9)\nr0 = 0\nexit");
        let (plan, stores, _) = plan_of(&src, CallUse::KeyLookup);
        assert!(!plan.dead.contains(&stores[0]), "{plan:?}");
    }

    #[test]
    fn a_store_overwritten_before_any_read_is_dead() {
        let src = "*(u64 *)(r10 - 8) = 1\n*(u64 *)(r10 - 8) = 2\nr0 = *(u64 *)(r10 - 8)\nexit";
        let (plan, stores, _) = plan_of(src, CallUse::KeyLookup);
        assert_eq!(plan.dead, HashSet::from([stores[0]]));
        // Partly overwritten: the other bytes are still read.
        let src = "*(u64 *)(r10 - 8) = 1\n*(u32 *)(r10 - 8) = 2\nr0 = *(u64 *)(r10 - 8)\nexit";
        assert!(plan_of(src, CallUse::KeyLookup).0.dead.is_empty());
    }

    #[test]
    fn frames_outlive_their_functions() {
        // The second call of `f` reads what the first stored (the interpreter gives 7): the
        // store before a called function's exit stays.
        let src = "r1 = 0\ncall f\nr1 = 1\ncall f\nexit\nf:\nif r1 != 0 goto +3\n*(u64 *)(r10 - 8) = 7\nr0 = 0\nexit\nr0 = *(u64 *)(r10 - 8)\nexit";
        let prog = verified(src);
        let callee = prog.functions()[1];
        let plan = plan(&prog, callee.start, callee.end, false, |_, _| CallUse::Helper(5));
        assert!(plan.dead.is_empty(), "{plan:?}");
        // A callback of bpf_loop can reach its caller's frame whatever the arguments (here the
        // callback by number, and its frame's address computed): the store before the loop stays.
        let src = "*(u64 *)(r10 - 8) = 1\nr6 = func(8) ll\nr1 = 2\nr2 = 10\nr3 = 0\nr4 = 0\nr5 = 0\ncall 181\nexit\nr1 = r10\nr1 += 3576\nr0 = *(u64 *)(r1 + 0)\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.dead.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_key_changed_after_its_store_is_read_from_the_stack() {
        // A byte of the key stored again between: not forwarded, and both stores read.
        let src = "r6 = *(u32 *)(r1 + 0)\n*(u32 *)(r10 - 4) = r6\n*(u8 *)(r10 - 3) = 7\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.forwarded.is_empty() && plan.dead.is_empty(), "{plan:?}");
        // Stored in another block (a jump lands between): not forwarded.
        let src = "r6 = *(u32 *)(r1 + 0)\n*(u32 *)(r10 - 4) = r6\nif r6 == 0 goto +1\nr6 += 1\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit";
        let (plan, ..) = plan_of(src, CallUse::KeyLookup);
        assert!(plan.forwarded.is_empty() && plan.dead.is_empty(), "{plan:?}");
    }
}
