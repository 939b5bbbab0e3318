//! Rules the kernel's verifier applies to its program types and a VM on its own does not
//! (the conformance suite's programs read r2, the memory's length): registers read before
//! they are set ("R%d !read_ok"), and writes into a context such programs may only read.
//!
//! Registers:
//! a forward data-flow pass over each function's control-flow graph (both ways of every
//! conditional jump) of the registers set on every path. A function's entry has r10 and its
//! arguments (the program's entry: r1, the context); a call leaves r0 set and r1-r5 unset.
//! A helper's arguments are not checked (their number is the helper's), nor r0 at the exit
//! of a function other than the entry (static functions returning nothing end without it).

use crate::analysis::Target;
use crate::insn::{AluOp, AtomicOp, Insn, Operand, Reg};
use crate::program::{Function, Program};
use crate::verifier::{VerifyError, VerifyErrorKind};

/// A set of registers, bit `i` for r`i`.
type Regs = u16;

const R10: Regs = 1 << 10;
const ARGS: Regs = 0b11_1110;

fn bit(r: Reg) -> Regs {
    1 << r.index()
}

/// The registers `insn` reads, and those it leaves set given `set` before it.
fn step(insn: Insn, set: Regs) -> (Regs, Regs) {
    let operand = |o: Operand| if let Operand::Reg(r) = o { bit(r) } else { 0 };
    match insn {
        Insn::Alu { op: AluOp::Mov | AluOp::MovSx8 | AluOp::MovSx16 | AluOp::MovSx32, dst, src, .. } => (operand(src), set | bit(dst)),
        Insn::Alu { dst, src, .. } => (bit(dst) | operand(src), set | bit(dst)),
        Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => (bit(dst), set),
        Insn::Lddw { dst, .. } => (0, set | bit(dst)),
        Insn::Load { dst, base, .. } => (bit(base), set | bit(dst)),
        Insn::Store { base, src, .. } => (bit(base) | operand(src), set),
        Insn::Atomic { op: AtomicOp::CmpXchg, base, src, .. } => (bit(base) | bit(src) | bit(Reg::R0), set | bit(Reg::R0)),
        Insn::Atomic { fetch, base, src, .. } => (bit(base) | bit(src), if fetch { set | bit(src) } else { set }),
        Insn::Jump { dst, src, .. } => (bit(dst) | operand(src), set),
        Insn::Call(_) => (0, (set & !ARGS) | bit(Reg::R0)),
        Insn::CallReg(r) => (bit(r), (set & !ARGS) | bit(Reg::R0)),
        _ => (0, set),
    }
}

/// Refuses, as the kernel refuses for its program types, the first read of a register no path
/// has set and (with `context_read_only`) the first store into the context.
pub fn check_kernel_rules(program: &Program, context_read_only: bool) -> Result<(), VerifyError> {
    // Paths the kernel does not walk (code behind a branch on a constant, such as libbpf's
    // CO-RE guards leave) may read registers a dead call left unset: only reachable slots
    // count, so a program rebuilt from a record (which does not say) is not checked.
    if program.reachable(0).is_some() {
        registers_set_before_read(program.insns(), program.functions(), |pc| program.reachable(pc) == Some(true))?;
    }
    if context_read_only {
        let writes = |pc: usize| matches!(program.insns()[pc], Insn::Store { .. } | Insn::Atomic { .. });
        if let Some(pc) = (0..program.insns().len()).find(|&pc| writes(pc) && program.access(pc).target == Target::Context) {
            return Err(VerifyError { insn: pc, kind: VerifyErrorKind::ContextWrite });
        }
    }
    Ok(())
}

/// Refuses the first read of a register no path has set, in any function.
fn registers_set_before_read(insns: &[Insn], functions: &[Function], reachable: impl Fn(usize) -> bool) -> Result<(), VerifyError> {
    for (i, f) in functions.iter().enumerate() {
        let entry = if i == 0 && !f.callback { R10 | bit(Reg::R1) } else { R10 | ARGS };
        // The registers set on every path to each slot (None: no path reaches it).
        let mut set: Vec<Option<Regs>> = vec![None; f.end - f.start];
        if !reachable(f.start) {
            continue;
        }
        set[0] = Some(entry);
        let mut todo = vec![f.start];
        while let Some(pc) = todo.pop() {
            let Some(before) = set[pc - f.start] else { continue };
            let insn = insns[pc];
            let (_, after) = step(insn, before);
            let next = match insn {
                Insn::Exit => vec![],
                Insn::Ja { .. } => insn.jump_target(pc).into_iter().map(|t| t as usize).collect(),
                Insn::Jump { .. } => insn.jump_target(pc).into_iter().map(|t| t as usize).chain([pc + 1]).collect(),
                Insn::Lddw { .. } => vec![pc + 2],
                _ => vec![pc + 1],
            };
            for n in next.into_iter().filter(|&n| (f.start..f.end).contains(&n) && reachable(n)) {
                let slot = &mut set[n - f.start];
                let merged = slot.map_or(after, |s| s & after);
                if *slot != Some(merged) {
                    *slot = Some(merged);
                    todo.push(n);
                }
            }
        }
        for pc in f.start..f.end {
            let Some(before) = set[pc - f.start] else { continue };
            let (mut reads, _) = step(insns[pc], before);
            if insns[pc] == Insn::Exit && i == 0 {
                reads |= bit(Reg::R0);
            }
            if let Some(r) = (0..11).find(|r| reads & !before & (1 << r) != 0) {
                return Err(VerifyError { insn: pc, kind: VerifyErrorKind::UninitRegister { reg: r as u8 } });
            }
        }
    }
    Ok(())
}
