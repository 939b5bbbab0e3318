//! Disassembly in the syntax of `llvm-objdump -d` for BPF (`r0 += r1`, `w1 = *(u32 *)...`).
//!
//! The text of one instruction matches what llvm-objdump 14 prints for the same encoding
//! (without its `<label>` annotations); instructions newer than LLVM 14 (v4) use the syntax
//! later LLVM releases print. One exception: llvm prints a bpf-to-bpf call like a helper call
//! (`call -1`), which is ambiguous, so local calls print as bpftool does (`call pc-1`).
//! [`crate::asm`] parses this syntax back.

use crate::insn::{AluOp, AtomicOp, ByteOrder, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, Reg, Width};
use std::fmt::{self, Write};

/// Formats one instruction; `Display` prints it in llvm-objdump syntax.
pub struct Disasm<'a>(pub &'a Insn);

/// A register shown as `rN` (64-bit) or `wN` (32-bit).
struct R(Reg, Width);

impl fmt::Display for R {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = if self.1 == Width::W64 { 'r' } else { 'w' };
        write!(f, "{p}{}", self.0.num())
    }
}

struct Opnd(Operand, Width);

impl fmt::Display for Opnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Operand::Reg(r) => R(r, self.1).fmt(f),
            Operand::Imm(i) => write!(f, "{i}"),
        }
    }
}

/// `(r1 + 8)` / `(r10 - 4)`.
struct Addr(Reg, i16);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 < 0 {
            write!(f, "{} - {}", self.0, -(self.1 as i32))
        } else {
            write!(f, "{} + {}", self.0, self.1)
        }
    }
}

/// Type name of an access size: `u8`, `s16`, ...
pub fn size_name(size: MemSize, signed: bool) -> &'static str {
    match (size, signed) {
        (MemSize::B, false) => "u8",
        (MemSize::H, false) => "u16",
        (MemSize::W, false) => "u32",
        (MemSize::DW, false) => "u64",
        (MemSize::B, true) => "s8",
        (MemSize::H, true) => "s16",
        (MemSize::W, true) => "s32",
        (MemSize::DW, true) => "s64",
    }
}

/// The compound-assignment operator of a binary ALU operation (`+=`), if it has one.
pub fn alu_op_str(op: AluOp) -> Option<&'static str> {
    Some(match op {
        AluOp::Add => "+=",
        AluOp::Sub => "-=",
        AluOp::Mul => "*=",
        AluOp::Div => "/=",
        AluOp::SDiv => "s/=",
        AluOp::Or => "|=",
        AluOp::And => "&=",
        AluOp::Lsh => "<<=",
        AluOp::Rsh => ">>=",
        AluOp::Mod => "%=",
        AluOp::SMod => "s%=",
        AluOp::Xor => "^=",
        AluOp::Arsh => "s>>=",
        AluOp::Mov | AluOp::MovSx8 | AluOp::MovSx16 | AluOp::MovSx32 => return None,
    })
}

/// The comparison operator of a jump condition (`==`, `s<`, ...).
pub fn cond_str(c: JmpCond) -> &'static str {
    match c {
        JmpCond::Eq => "==",
        JmpCond::Gt => ">",
        JmpCond::Ge => ">=",
        JmpCond::Set => "&",
        JmpCond::Ne => "!=",
        JmpCond::Sgt => "s>",
        JmpCond::Sge => "s>=",
        JmpCond::Lt => "<",
        JmpCond::Le => "<=",
        JmpCond::Slt => "s<",
        JmpCond::Sle => "s<=",
    }
}

fn atomic_op_name(op: AtomicOp) -> &'static str {
    match op {
        AtomicOp::Add => "add",
        AtomicOp::Or => "or",
        AtomicOp::And => "and",
        AtomicOp::Xor => "xor",
        AtomicOp::Xchg => "xchg",
        AtomicOp::CmpXchg => "cmpxchg",
    }
}

fn atomic_op_sym(op: AtomicOp) -> &'static str {
    match op {
        AtomicOp::Add => "+=",
        AtomicOp::Or => "|=",
        AtomicOp::And => "&=",
        AtomicOp::Xor => "^=",
        AtomicOp::Xchg | AtomicOp::CmpXchg => unreachable!("xchg and cmpxchg always fetch"),
    }
}

fn signed_off(off: i64) -> String {
    if off < 0 {
        format!("{off}")
    } else {
        format!("+{off}")
    }
}

impl fmt::Display for Disasm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Insn::Alu { width, op, dst, src } => {
                let d = R(dst, width);
                match op {
                    AluOp::Mov => write!(f, "{d} = {}", Opnd(src, width)),
                    AluOp::MovSx8 | AluOp::MovSx16 | AluOp::MovSx32 => {
                        let bits = match op {
                            AluOp::MovSx8 => 8,
                            AluOp::MovSx16 => 16,
                            _ => 32,
                        };
                        write!(f, "{d} = (s{bits}){}", Opnd(src, width))
                    }
                    _ => write!(f, "{d} {} {}", alu_op_str(op).expect("binary op"), Opnd(src, width)),
                }
            }
            Insn::Neg { width, dst } => write!(f, "{0} = -{0}", R(dst, width)),
            Insn::Endian { order, bits, dst } => {
                let name = match order {
                    ByteOrder::ToLe => "le",
                    ByteOrder::ToBe => "be",
                    ByteOrder::Swap => "bswap",
                };
                write!(f, "{dst} = {name}{bits} {dst}")
            }
            Insn::Lddw { dst, kind, lo, hi } => {
                let v = (lo as u32 as u64) | ((hi as u32 as u64) << 32);
                match kind {
                    LddwKind::Imm64 => write!(f, "{dst} = {} ll", v as i64),
                    LddwKind::MapFd => write!(f, "{dst} = map_fd({lo}) ll"),
                    LddwKind::MapValue => write!(f, "{dst} = map_value({lo}) + {} ll", hi as u32),
                    LddwKind::BtfId => write!(f, "{dst} = btf_id({lo}) ll"),
                    LddwKind::Func => write!(f, "{dst} = func({}) ll", signed_off(lo as i64)),
                    LddwKind::MapIdx => write!(f, "{dst} = map_idx({lo}) ll"),
                    LddwKind::MapIdxValue => write!(f, "{dst} = map_idx_value({lo}) + {} ll", hi as u32),
                }
            }
            Insn::LddwHigh => write!(f, "<lddw high half>"),
            Insn::Load { size, signed, dst, base, off } => {
                write!(f, "{dst} = *({} *)({})", size_name(size, signed), Addr(base, off))
            }
            Insn::Store { size, base, off, src } => {
                write!(f, "*({} *)({}) = {}", size_name(size, false), Addr(base, off), Opnd(src, Width::W64))
            }
            Insn::Atomic { size, op, fetch, base, off, src } => {
                let w = if size == MemSize::DW { Width::W64 } else { Width::W32 };
                let bits = if size == MemSize::DW { 64 } else { 32 };
                let ty = size_name(size, false);
                match op {
                    AtomicOp::Xchg => {
                        let sfx = if bits == 64 { "_64" } else { "32_32" };
                        write!(f, "{} = xchg{sfx}({}, {})", R(src, w), Addr(base, off), R(src, w))
                    }
                    AtomicOp::CmpXchg => {
                        let sfx = if bits == 64 { "_64" } else { "32_32" };
                        let r0 = R(Reg::R0, w);
                        write!(f, "{r0} = cmpxchg{sfx}({}, {r0}, {})", Addr(base, off), R(src, w))
                    }
                    _ if fetch => write!(f, "{} = atomic_fetch_{}(({ty} *)({}), {})", R(src, w), atomic_op_name(op), Addr(base, off), R(src, w)),
                    _ => write!(f, "lock *({ty} *)({}) {} {}", Addr(base, off), atomic_op_sym(op), R(src, w)),
                }
            }
            Insn::Ja { off, long } => {
                write!(f, "{} {}", if long { "gotol" } else { "goto" }, signed_off(off as i64))
            }
            Insn::Jump { width, cond, dst, src, off } => {
                write!(f, "if {} {} {} goto {}", R(dst, width), cond_str(cond), Opnd(src, width), signed_off(off as i64))
            }
            Insn::Call(CallTarget::Helper(id)) => write!(f, "call {id}"),
            Insn::Call(CallTarget::Local(off)) => write!(f, "call pc{}", signed_off(off as i64)),
            Insn::Call(CallTarget::Kfunc(id)) => write!(f, "call kfunc({id})"),
            Insn::CallReg(r) => write!(f, "callx {r}"),
            Insn::Exit => write!(f, "exit"),
        }
    }
}

/// Disassembles a decoded program, one line per instruction: `index: text`.
pub fn disassemble(insns: &[Insn]) -> String {
    let mut out = String::new();
    for (pc, insn) in insns.iter().enumerate() {
        if matches!(insn, Insn::LddwHigh) {
            continue;
        }
        let _ = writeln!(out, "{pc:>6}:\t{}", Disasm(insn));
    }
    out
}

/// The disassembly of a verified program, each load, store and atomic annotated with what the
/// verifier proved (`proven` or `checked`, and the region), inlined map lookups marked, and a
/// closing summary.
pub fn disassemble_with_proofs(prog: &crate::Program) -> String {
    use crate::analysis::Target;
    let mut out = String::new();
    let (mut proven, mut all, mut on_entry) = (0, 0, 0);
    // Accesses of walked loops, checked once per entry into their loop.
    let walked: Vec<usize> = if prog.walk_checks_on_entry() {
        prog.functions()
            .iter()
            .flat_map(|f| crate::walks::walked_loops(prog.insns(), f.start, f.end, &|pc| prog.is_resolved(pc)))
            .flat_map(|w| w.walks)
            .map(|a| a.pc)
            .collect()
    } else {
        vec![]
    };
    for (pc, insn) in prog.insns().iter().enumerate() {
        if matches!(insn, Insn::LddwHigh) {
            continue;
        }
        let note = match insn {
            Insn::Load { .. } | Insn::Store { .. } | Insn::Atomic { .. } => {
                let a = prog.access(pc);
                all += 1;
                proven += a.proven as usize;
                let region = match a.target {
                    Target::Stack => "stack",
                    Target::Context => "context",
                    Target::Memory => "memory",
                    Target::Unknown => "unknown",
                };
                on_entry += (!a.proven && walked.contains(&pc)) as usize;
                let how = match (a.proven, walked.contains(&pc)) {
                    (true, _) => "proven",
                    (false, true) => "checked on loop entry",
                    (false, false) => "checked",
                };
                let probe = if a.probe { ", reads 0 where nothing is" } else { "" };
                format!("\t; {how} ({region}{probe})")
            }
            Insn::Call(_) if prog.inline_lookup(pc).is_some() => match prog.lookup_key(pc) {
                Some(k) => format!("\t; inlined array lookup, constant key {k}"),
                None => "\t; inlined array lookup".to_string(),
            },
            _ => String::new(),
        };
        let _ = writeln!(out, "{pc:>6}:\t{}{note}", Disasm(insn));
    }
    let needs = prog.context_needs();
    let _ = write!(out, "; {proven} of {all} memory accesses proven in bounds");
    if on_entry > 0 {
        let _ = write!(out, ", {on_entry} checked once per entry into their loop");
    }
    if needs.len > 0 {
        let _ = write!(out, "; the context proofs need {} bytes{}", needs.len, if needs.writable { ", writable" } else { "" });
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::{decode, RawInsn};

    fn text(r: RawInsn) -> String {
        Disasm(&crate::insn::decode_one(r).unwrap()).to_string()
    }

    #[test]
    fn llvm_syntax_samples() {
        // Encodings and texts taken from llvm-objdump 14 output of clang-built objects.
        assert_eq!(text(RawInsn::new(0xbc, 0, 1, 0, 0)), "w0 = w1");
        assert_eq!(text(RawInsn::new(0x24, 0, 0, 0, 3)), "w0 *= 3");
        assert_eq!(text(RawInsn::new(0x07, 2, 0, 0, -4)), "r2 += -4");
        assert_eq!(text(RawInsn::new(0x63, 10, 1, -4, 0)), "*(u32 *)(r10 - 4) = r1");
        assert_eq!(text(RawInsn::new(0xdb, 0, 1, 0, 0)), "lock *(u64 *)(r0 + 0) += r1");
        assert_eq!(text(RawInsn::new(0x66, 1, 0, 1, 5)), "if w1 s> 5 goto +1");
        assert_eq!(text(RawInsn::new(0xdb, 6, 2, 8, 1)), "r2 = atomic_fetch_add((u64 *)(r6 + 8), r2)");
        assert_eq!(text(RawInsn::new(0xdb, 6, 1, 16, 0xf1)), "r0 = cmpxchg_64(r6 + 16, r0, r1)");
        assert_eq!(text(RawInsn::new(0xdb, 6, 2, 24, 0xe1)), "r2 = xchg_64(r6 + 24, r2)");
        assert_eq!(text(RawInsn::new(0xdc, 1, 0, 0, 32)), "r1 = be32 r1");
        assert_eq!(text(RawInsn::new(0x85, 0, 1, 0, -1)), "call pc-1");
        assert_eq!(text(RawInsn::new(0x69, 1, 6, 32, 0)), "r1 = *(u16 *)(r6 + 32)");
        let lddw = decode(&[RawInsn::new(0x18, 4, 0, 0, -1), RawInsn::new(0, 0, 0, 0, 0)]).unwrap();
        assert_eq!(Disasm(&lddw[0]).to_string(), "r4 = 4294967295 ll");
    }
}
