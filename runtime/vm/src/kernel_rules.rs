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
use crate::insn::{AluOp, AtomicOp, CallTarget, Insn, Operand, Reg};
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
/// has set and (with `context_read_only`) the first store into the context. A function of the
/// instructions alone (and the accesses' targets, which a verification record keeps), so a
/// program rebuilt from the code cache gets the same answer as when first verified.
pub fn check_kernel_rules(program: &Program, context_read_only: bool) -> Result<(), VerifyError> {
    let known = |id: u32| program.helpers().get(id).is_some();
    registers_set_before_read(program.insns(), program.functions(), known)?;
    if context_read_only {
        let writes = |pc: usize| matches!(program.insns()[pc], Insn::Store { .. } | Insn::Atomic { .. });
        if let Some(pc) = (0..program.insns().len()).find(|&pc| writes(pc) && program.access(pc).target == Target::Context) {
            return Err(VerifyError { insn: pc, kind: VerifyErrorKind::ContextWrite });
        }
    }
    Ok(())
}

/// Refuses the first read of a register that no path to it has set, in any function. The
/// kernel refuses a read on any path it walks where the register is unset; it walks only the
/// paths it cannot prove dead, and follows correlated branches apart, which this pass does
/// not: it refuses only where every path leaves the register unset, so it never refuses what
/// the kernel takes. A call of a helper that does not exist (libbpf's poison, left in code the
/// kernel proves dead; refused where a run may reach it) ends its path.
fn registers_set_before_read(insns: &[Insn], functions: &[Function], known_helper: impl Fn(u32) -> bool) -> Result<(), VerifyError> {
    for (i, f) in functions.iter().enumerate() {
        let entry = if i == 0 && !f.callback { R10 | bit(Reg::R1) } else { R10 | ARGS };
        // The registers some path to each slot has set (None: no path reaches it).
        let mut set: Vec<Option<Regs>> = vec![None; f.end - f.start];
        set[0] = Some(entry);
        let mut todo = vec![f.start];
        while let Some(pc) = todo.pop() {
            let Some(before) = set[pc - f.start] else { continue };
            let insn = insns[pc];
            let (_, after) = step(insn, before);
            let next = match insn {
                Insn::Exit => vec![],
                Insn::Call(CallTarget::Helper(id)) if !known_helper(id) => vec![],
                Insn::Ja { .. } => insn.jump_target(pc).into_iter().map(|t| t as usize).collect(),
                Insn::Jump { .. } => insn.jump_target(pc).into_iter().map(|t| t as usize).chain([pc + 1]).collect(),
                Insn::Lddw { .. } => vec![pc + 2],
                _ => vec![pc + 1],
            };
            for n in next.into_iter().filter(|&n| (f.start..f.end).contains(&n)) {
                let slot = &mut set[n - f.start];
                let merged = slot.map_or(after, |s| s | after);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;
    use crate::exec::HelperTable;
    use crate::verifier::{verify, NoMaps};
    use std::sync::Arc;

    fn check(src: &str) -> Result<(), VerifyError> {
        extern "C" fn nop(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut crate::exec::RunState) -> u64 {
            0
        }
        let mut helpers = HelperTable::new();
        helpers.register(14, "get_current_pid_tgid", nop);
        check_kernel_rules(&verify(&assemble(src).unwrap(), Arc::new(helpers), &NoMaps).unwrap(), true)
    }

    /// A register no path sets is refused where it is read (r0 at the exit too); one set on
    /// some path is not (the kernel may prove the others dead, or follow correlated branches
    /// apart), nor one read after a call of a helper that does not exist (libbpf's poison).
    #[test]
    fn reads_are_refused_only_where_no_path_set_the_register() {
        let err = |src: &str| check(src).unwrap_err().kind;
        assert_eq!(err("exit"), VerifyErrorKind::UninitRegister { reg: 0 });
        assert_eq!(err("r0 = r3\n exit"), VerifyErrorKind::UninitRegister { reg: 3 });
        assert_eq!(err("r1 = 1\n call 14\n r0 = r1\n exit"), VerifyErrorKind::UninitRegister { reg: 1 });
        assert_eq!(err("*(u64 *)(r1 + 0) = 1\n r0 = 0\n exit"), VerifyErrorKind::ContextWrite);
        // Set on one path only: a dead edge or correlated branches for the kernel.
        assert!(check("r2 = 0\n if r2 != 0 goto l\n r7 = 5\n l:\n r0 = r7\n exit").is_ok());
        assert!(check("call 14\n r6 = r0\n if r6 == 0 goto a\n r7 = 5\n a:\n if r6 == 0 goto b\n r0 = r7\n exit\n b:\n r0 = 0\n exit").is_ok());
        // A poisoned call ends its path: what follows it is not read on any path.
        assert!(check("r2 = 0\n if r2 == 0 goto l\n call 195896080\n r0 = r1\n exit\n l:\n r0 = 0\n exit").is_ok());
    }
}
