//! An assembler for the llvm-objdump syntax printed by [`crate::disasm`].
//!
//! Beyond that syntax it accepts labels (`loop:` on a line, `goto loop`, `call my_func` for a
//! bpf-to-bpf call), comments (`#`, `//`, `;`), and a leading `N:` slot index as printed by the
//! disassembler. `call N` is a helper call; a local call is written `call pc+N` (as the
//! disassembler prints it), `call local +N`, or with a label. It exists so that tests can be written as readable text.

use crate::insn::{encode, AluOp, AtomicOp, ByteOrder, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, RawInsn, Reg, Width};
use std::collections::HashMap;

/// An assembly error with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct AsmError {
    /// 1-based line number in the source.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// A jump or call target before labels are resolved.
enum Target {
    Rel(i64),
    Label(String),
}

/// An instruction whose target may still be a label.
enum Pending {
    Done(Insn),
    Ja { target: Target, long: bool },
    Jump { width: Width, cond: JmpCond, dst: Reg, src: Operand, target: Target },
    CallLocal(Target),
}

/// Assembles source text into instruction slots.
pub fn assemble(src: &str) -> Result<Vec<RawInsn>, AsmError> {
    let mut labels = HashMap::new();
    let mut items: Vec<(usize, usize, Pending)> = Vec::new(); // (line, slot, insn)
    let mut slot = 0usize;
    for (i, raw_line) in src.lines().enumerate() {
        let line_no = i + 1;
        let err = |msg: String| AsmError { line: line_no, msg };
        let mut line = strip_comment(raw_line).trim();
        line = strip_slot_index(line);
        // Leading labels: `name:` (possibly followed by an instruction).
        while let Some((label, rest)) = split_label(line) {
            if labels.insert(label.to_string(), slot).is_some() {
                return Err(err(format!("label `{label}` defined twice")));
            }
            line = rest.trim();
        }
        if line.is_empty() {
            continue;
        }
        let pending = parse_line(line).map_err(err)?;
        let width = match pending {
            Pending::Done(Insn::Lddw { .. }) => 2,
            _ => 1,
        };
        items.push((line_no, slot, pending));
        slot += width;
    }
    let resolve = |t: &Target, line: usize, pc: usize| -> Result<i64, AsmError> {
        match t {
            Target::Rel(r) => Ok(*r),
            Target::Label(l) => labels.get(l).map(|&s| s as i64 - pc as i64 - 1).ok_or_else(|| AsmError { line, msg: format!("unknown label `{l}`") }),
        }
    };
    let mut insns = Vec::with_capacity(slot);
    for (line, pc, p) in items {
        let range = |v: i64, bits: u32| -> Result<i64, AsmError> {
            let lim = 1i64 << (bits - 1);
            if v < -lim || v >= lim {
                Err(AsmError { line, msg: format!("jump offset {v} does not fit in {bits} bits") })
            } else {
                Ok(v)
            }
        };
        let insn = match p {
            Pending::Done(i) => i,
            Pending::Ja { target, long } => {
                let off = resolve(&target, line, pc)?;
                Insn::Ja { off: range(off, if long { 32 } else { 16 })? as i32, long }
            }
            Pending::Jump { width, cond, dst, src, target } => {
                let off = range(resolve(&target, line, pc)?, 16)? as i16;
                Insn::Jump { width, cond, dst, src, off }
            }
            Pending::CallLocal(target) => Insn::Call(CallTarget::Local(range(resolve(&target, line, pc)?, 32)? as i32)),
        };
        insns.push(insn);
        if let Insn::Lddw { .. } = insn {
            insns.push(Insn::LddwHigh);
        }
    }
    Ok(encode(&insns))
}

fn strip_comment(line: &str) -> &str {
    let mut end = line.len();
    for pat in ["#", "//", ";"] {
        if let Some(p) = line.find(pat) {
            end = end.min(p);
        }
    }
    &line[..end]
}

fn strip_slot_index(line: &str) -> &str {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && line[digits..].starts_with(':') {
        line[digits + 1..].trim_start()
    } else {
        line
    }
}

fn split_label(line: &str) -> Option<(&str, &str)> {
    let name_len = line.char_indices().take_while(|&(i, c)| c == '_' || c == '.' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())).count();
    if name_len > 0 && line[name_len..].starts_with(':') {
        Some((&line[..name_len], &line[name_len + 1..]))
    } else {
        None
    }
}

/// A cursor over one line.
struct Cur<'a> {
    s: &'a str,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        self.s = self.s.trim_start();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if let Some(rest) = self.s.strip_prefix(tok) {
            self.s = rest;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), String> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(format!("expected `{tok}` at `{}`", self.s.trim()))
        }
    }

    fn peek_reg(&self) -> Option<(Reg, Width, &'a str)> {
        let s = self.s.trim_start();
        let width = match s.as_bytes().first()? {
            b'r' => Width::W64,
            b'w' => Width::W32,
            _ => return None,
        };
        let digits = s[1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || s[1 + digits..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let n: u8 = s[1..1 + digits].parse().ok()?;
        Some((Reg::new(n)?, width, &s[1 + digits..]))
    }

    fn reg(&mut self) -> Result<(Reg, Width), String> {
        match self.peek_reg() {
            Some((r, w, rest)) => {
                self.s = rest;
                Ok((r, w))
            }
            None => Err(format!("expected a register at `{}`", self.s.trim())),
        }
    }

    fn int(&mut self) -> Result<i128, String> {
        self.ws();
        let s = self.s;
        let (neg, body) = if let Some(b) = s.strip_prefix('-') {
            (true, b)
        } else if let Some(b) = s.strip_prefix('+') {
            (false, b)
        } else {
            (false, s)
        };
        let (radix, digits_start) = if body.starts_with("0x") || body.starts_with("0X") { (16, 2) } else { (10, 0) };
        let len = body[digits_start..].bytes().take_while(|b| (*b as char).is_digit(radix)).count();
        if len == 0 {
            return Err(format!("expected a number at `{}`", s.trim()));
        }
        let v = i128::from_str_radix(&body[digits_start..digits_start + len], radix).map_err(|e| e.to_string())?;
        self.s = &body[digits_start + len..];
        Ok(if neg { -v } else { v })
    }

    fn imm32(&mut self) -> Result<i32, String> {
        let v = self.int()?;
        if v >= i32::MIN as i128 && v <= u32::MAX as i128 {
            Ok(v as i64 as i32)
        } else {
            Err(format!("immediate {v} does not fit in 32 bits"))
        }
    }

    fn ident(&mut self) -> Option<&'a str> {
        self.ws();
        let len = self.s.char_indices().take_while(|&(i, c)| c == '_' || c == '.' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())).count();
        if len == 0 {
            return None;
        }
        let (id, rest) = self.s.split_at(len);
        self.s = rest;
        Some(id)
    }

    fn operand(&mut self) -> Result<Operand, String> {
        if self.peek_reg().is_some() {
            Ok(Operand::Reg(self.reg()?.0))
        } else {
            Ok(Operand::Imm(self.imm32()?))
        }
    }

    fn target(&mut self) -> Result<Target, String> {
        self.ws();
        if self.s.starts_with(['+', '-']) || self.s.starts_with(|c: char| c.is_ascii_digit()) {
            Ok(Target::Rel(self.int()? as i64))
        } else {
            self.ident().map(|l| Target::Label(l.to_string())).ok_or_else(|| "expected a jump target".to_string())
        }
    }

    /// `(u32 *)` — returns the size and signedness.
    fn mem_type(&mut self) -> Result<(MemSize, bool), String> {
        self.expect("(")?;
        let ty = self.ident().ok_or("expected a type like u32")?;
        let (size, signed) = match ty {
            "u8" => (MemSize::B, false),
            "u16" => (MemSize::H, false),
            "u32" => (MemSize::W, false),
            "u64" => (MemSize::DW, false),
            "s8" => (MemSize::B, true),
            "s16" => (MemSize::H, true),
            "s32" => (MemSize::W, true),
            "s64" => (MemSize::DW, true),
            other => return Err(format!("unknown type `{other}`")),
        };
        self.expect("*")?;
        self.expect(")")?;
        Ok((size, signed))
    }

    /// `r1 + 8` or `r10 - 4`.
    fn addr(&mut self) -> Result<(Reg, i16), String> {
        let (base, w) = self.reg()?;
        if w != Width::W64 {
            return Err("address base must be a 64-bit register".into());
        }
        let sign = if self.eat("+") {
            1
        } else if self.eat("-") {
            -1
        } else {
            return Ok((base, 0));
        };
        let v = sign * self.int()?;
        let off = i16::try_from(v).map_err(|_| format!("offset {v} does not fit in 16 bits"))?;
        Ok((base, off))
    }

    /// `*(u32 *)(r1 + 8)`.
    fn mem_ref(&mut self) -> Result<(MemSize, bool, Reg, i16), String> {
        self.expect("*")?;
        let (size, signed) = self.mem_type()?;
        self.expect("(")?;
        let (base, off) = self.addr()?;
        self.expect(")")?;
        Ok((size, signed, base, off))
    }

    fn end(&mut self) -> Result<(), String> {
        self.ws();
        if self.s.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected `{}`", self.s))
        }
    }
}

fn parse_line(line: &str) -> Result<Pending, String> {
    let mut c = Cur { s: line };
    let p = parse_insn(&mut c)?;
    c.end()?;
    Ok(p)
}

fn cond_from(s: &str) -> Option<JmpCond> {
    Some(match s {
        "==" => JmpCond::Eq,
        ">" => JmpCond::Gt,
        ">=" => JmpCond::Ge,
        "&" => JmpCond::Set,
        "!=" => JmpCond::Ne,
        "s>" => JmpCond::Sgt,
        "s>=" => JmpCond::Sge,
        "<" => JmpCond::Lt,
        "<=" => JmpCond::Le,
        "s<" => JmpCond::Slt,
        "s<=" => JmpCond::Sle,
        _ => return None,
    })
}

fn alu_from(s: &str) -> Option<AluOp> {
    Some(match s {
        "+=" => AluOp::Add,
        "-=" => AluOp::Sub,
        "*=" => AluOp::Mul,
        "/=" => AluOp::Div,
        "s/=" => AluOp::SDiv,
        "|=" => AluOp::Or,
        "&=" => AluOp::And,
        "<<=" => AluOp::Lsh,
        ">>=" => AluOp::Rsh,
        "%=" => AluOp::Mod,
        "s%=" => AluOp::SMod,
        "^=" => AluOp::Xor,
        "s>>=" => AluOp::Arsh,
        _ => return None,
    })
}

fn atomic_from(s: &str) -> Option<AtomicOp> {
    Some(match s {
        "+=" | "add" => AtomicOp::Add,
        "|=" | "or" => AtomicOp::Or,
        "&=" | "and" => AtomicOp::And,
        "^=" | "xor" => AtomicOp::Xor,
        _ => return None,
    })
}

/// The next whitespace-delimited word.
fn word<'a>(c: &mut Cur<'a>) -> &'a str {
    c.ws();
    let len = c.s.find(char::is_whitespace).unwrap_or(c.s.len());
    let (w, rest) = c.s.split_at(len);
    c.s = rest;
    w
}

fn parse_insn(c: &mut Cur) -> Result<Pending, String> {
    use Pending::Done;
    if c.eat("exit") {
        return Ok(Done(Insn::Exit));
    }
    if c.eat("gotol ") {
        return Ok(Pending::Ja { target: c.target()?, long: true });
    }
    if c.eat("goto ") {
        return Ok(Pending::Ja { target: c.target()?, long: false });
    }
    if c.eat("if ") {
        let (dst, width) = c.reg()?;
        let op = word(c);
        let cond = cond_from(op).ok_or_else(|| format!("unknown condition `{op}`"))?;
        let src = c.operand()?;
        c.expect("goto")?;
        return Ok(Pending::Jump { width, cond, dst, src, target: c.target()? });
    }
    if c.eat("callx ") {
        return Ok(Done(Insn::CallReg(c.reg()?.0)));
    }
    if c.eat("call ") {
        if c.eat("local ") || c.eat("pc") {
            return Ok(Pending::CallLocal(c.target()?));
        }
        if c.eat("kfunc(") {
            let id = c.imm32()? as u32;
            c.expect(")")?;
            return Ok(Done(Insn::Call(CallTarget::Kfunc(id))));
        }
        return Ok(match c.target()? {
            Target::Rel(id) => Done(Insn::Call(CallTarget::Helper(u32::try_from(id).map_err(|_| format!("bad helper id {id}"))?))),
            label => Pending::CallLocal(label),
        });
    }
    if c.eat("lock ") {
        let (size, _, base, off) = c.mem_ref()?;
        let op = word(c);
        let op = atomic_from(op).ok_or_else(|| format!("unknown atomic operation `{op}`"))?;
        let (src, _) = c.reg()?;
        return Ok(Done(Insn::Atomic { size, op, fetch: false, base, off, src }));
    }
    if c.s.trim_start().starts_with('*') {
        let (size, _, base, off) = c.mem_ref()?;
        c.expect("=")?;
        return Ok(Done(Insn::Store { size, base, off, src: c.operand()? }));
    }
    let (dst, width) = c.reg()?;
    let op = word(c);
    if op != "=" {
        let alu = alu_from(op).ok_or_else(|| format!("unknown operator `{op}`"))?;
        return Ok(Done(Insn::Alu { width, op: alu, dst, src: c.operand()? }));
    }
    // `dst = ...`
    if let Some(rest) = c.s.trim_start().strip_prefix('-') {
        if (Cur { s: rest }).peek_reg().is_some() {
            c.s = rest;
            let (r, _) = c.reg()?;
            if r != dst {
                return Err("negation must be `rX = -rX`".into());
            }
            return Ok(Done(Insn::Neg { width, dst }));
        }
    }
    if c.s.trim_start().starts_with("*(") {
        let (size, signed, base, off) = c.mem_ref()?;
        return Ok(Done(Insn::Load { size, signed, dst, base, off }));
    }
    if c.eat("(s") {
        let bits = c.int()?;
        c.expect(")")?;
        let op = match bits {
            8 => AluOp::MovSx8,
            16 => AluOp::MovSx16,
            32 => AluOp::MovSx32,
            _ => return Err(format!("bad sign-extension width {bits}")),
        };
        let (src, _) = c.reg()?;
        return Ok(Done(Insn::Alu { width, op, dst, src: Operand::Reg(src) }));
    }
    if c.peek_reg().is_some() {
        let (src, _) = c.reg()?;
        return Ok(Done(Insn::Alu { width, op: AluOp::Mov, dst, src: Operand::Reg(src) }));
    }
    if let Some(name) = (Cur { s: c.s }).ident() {
        let mut probe = Cur { s: c.s };
        probe.ident();
        for (prefix, order) in [("bswap", ByteOrder::Swap), ("be", ByteOrder::ToBe), ("le", ByteOrder::ToLe)] {
            if let Some(bits) = name.strip_prefix(prefix).and_then(|b| b.parse::<u32>().ok()) {
                c.s = probe.s;
                let (r, _) = c.reg()?;
                if r != dst || !matches!(bits, 16 | 32 | 64) {
                    return Err("byte swap must be `rX = be16 rX` with 16, 32 or 64".into());
                }
                return Ok(Done(Insn::Endian { order, bits, dst }));
            }
        }
        if name.starts_with("atomic_fetch_") || name.starts_with("xchg") || name.starts_with("cmpxchg") {
            c.s = probe.s;
            return parse_fetch_atomic(c, name, dst);
        }
        let kind = match name {
            "map_fd" => LddwKind::MapFd,
            "map_value" => LddwKind::MapValue,
            "btf_id" => LddwKind::BtfId,
            "func" => LddwKind::Func,
            "map_idx" => LddwKind::MapIdx,
            "map_idx_value" => LddwKind::MapIdxValue,
            other => return Err(format!("unknown expression `{other}`")),
        };
        c.s = probe.s;
        c.expect("(")?;
        let lo = c.imm32()?;
        c.expect(")")?;
        let hi = if c.eat("+") { c.imm32()? } else { 0 };
        c.expect("ll")?;
        return Ok(Done(Insn::Lddw { dst, kind, lo, hi }));
    }
    parse_mov_imm(c, dst, width)
}

fn parse_mov_imm(c: &mut Cur, dst: Reg, width: Width) -> Result<Pending, String> {
    let v = c.int()?;
    if c.eat("ll") {
        if v < i64::MIN as i128 || v > u64::MAX as i128 {
            return Err(format!("immediate {v} does not fit in 64 bits"));
        }
        let v = v as u64;
        return Ok(Pending::Done(Insn::Lddw { dst, kind: LddwKind::Imm64, lo: v as u32 as i32, hi: (v >> 32) as u32 as i32 }));
    }
    if v < i32::MIN as i128 || v > u32::MAX as i128 {
        return Err(format!("immediate {v} does not fit in 32 bits (use `ll` for 64-bit constants)"));
    }
    Ok(Pending::Done(Insn::Alu { width, op: AluOp::Mov, dst, src: Operand::Imm(v as i64 as i32) }))
}

fn parse_fetch_atomic(c: &mut Cur, name: &str, dst: Reg) -> Result<Pending, String> {
    c.expect("(")?;
    if let Some(op) = name.strip_prefix("atomic_fetch_") {
        let op = atomic_from(op).ok_or_else(|| format!("unknown atomic `{name}`"))?;
        let (size, _) = c.mem_type()?;
        c.expect("(")?;
        let (base, off) = c.addr()?;
        c.expect(")")?;
        c.expect(",")?;
        let (src, _) = c.reg()?;
        c.expect(")")?;
        if src != dst {
            return Err("atomic_fetch_* must write its source register".into());
        }
        return Ok(Pending::Done(Insn::Atomic { size, op, fetch: true, base, off, src }));
    }
    let size = if name.ends_with("_64") {
        MemSize::DW
    } else if name.ends_with("32_32") {
        MemSize::W
    } else {
        return Err(format!("unknown atomic `{name}`"));
    };
    let (base, off) = c.addr()?;
    c.expect(",")?;
    let insn = if name.starts_with("cmpxchg") {
        let (r0, _) = c.reg()?;
        c.expect(",")?;
        let (src, _) = c.reg()?;
        if r0 != Reg::R0 || dst != Reg::R0 {
            return Err("cmpxchg compares and returns r0".into());
        }
        Insn::Atomic { size, op: AtomicOp::CmpXchg, fetch: true, base, off, src }
    } else {
        let (src, _) = c.reg()?;
        if src != dst {
            return Err("xchg must write its source register".into());
        }
        Insn::Atomic { size, op: AtomicOp::Xchg, fetch: true, base, off, src }
    };
    c.expect(")")?;
    Ok(Pending::Done(insn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disasm::Disasm;
    use crate::insn::decode;

    #[test]
    fn labels_and_relative_targets() {
        let prog = assemble("  r0 = 0\nloop:\n  r0 += 1  # count\n  if r0 < 10 goto loop\n  goto +0\n  r1 = 0x100000000 ll\n exit").unwrap();
        let insns = decode(&prog).unwrap();
        assert_eq!(Disasm(&insns[2]).to_string(), "if r0 < 10 goto -2");
        assert_eq!(Disasm(&insns[4]).to_string(), "r1 = 4294967296 ll");
    }

    #[test]
    fn negative_immediates() {
        let insns = decode(&assemble("r1 = -5\nw2 = -1\nr3 = -1 ll").unwrap()).unwrap();
        assert_eq!(Disasm(&insns[0]).to_string(), "r1 = -5");
        assert_eq!(Disasm(&insns[1]).to_string(), "w2 = -1");
        assert_eq!(Disasm(&insns[2]).to_string(), "r3 = -1 ll");
    }

    #[test]
    fn errors_name_the_line() {
        let e = assemble("r0 = 1\nr0 ?= 2").unwrap_err();
        assert_eq!(e.line, 2);
        let e = assemble("goto nowhere").unwrap_err();
        assert!(e.msg.contains("unknown label"), "{e}");
    }
}
