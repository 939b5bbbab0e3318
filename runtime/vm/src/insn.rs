//! The eBPF instruction model: raw 8-byte slots and their decoded form.
//!
//! Encoding follows RFC 9669 (and the v4 additions: sdiv/smod, movsx, ldsx, bswap, `gotol`).
//! A program is a sequence of 8-byte slots; `lddw` takes two. Decoding keeps one [`Insn`] per
//! slot (the second half of an `lddw` decodes to [`Insn::LddwHigh`]) so that instruction
//! indices, jump offsets and error positions all mean the same thing everywhere.

use std::fmt;

/// Size in bytes of one instruction slot.
pub const INSN_SIZE: usize = 8;

/// Instruction classes (low three bits of the opcode).
pub mod class {
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;
}

/// Source-operand bit of ALU and JMP opcodes.
pub const SRC_REG: u8 = 0x08;

/// Memory modes (bits 5..7 of load/store opcodes).
pub mod mode {
    pub const IMM: u8 = 0x00;
    pub const ABS: u8 = 0x20;
    pub const IND: u8 = 0x40;
    pub const MEM: u8 = 0x60;
    pub const MEMSX: u8 = 0x80;
    pub const ATOMIC: u8 = 0xc0;
}

/// Atomic operation codes carried in `imm` of `STX | ATOMIC`.
pub mod atomic {
    pub const ADD: i32 = 0x00;
    pub const OR: i32 = 0x40;
    pub const AND: i32 = 0x50;
    pub const XOR: i32 = 0xa0;
    pub const FETCH: i32 = 0x01;
    pub const XCHG: i32 = 0xe0 | FETCH;
    pub const CMPXCHG: i32 = 0xf0 | FETCH;
}

/// `src` values of `call` selecting what `imm` means.
pub mod call_src {
    pub const HELPER: u8 = 0;
    pub const LOCAL: u8 = 1;
    pub const KFUNC: u8 = 2;
}

/// One raw 8-byte instruction slot.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RawInsn {
    /// Opcode byte.
    pub opc: u8,
    /// Destination register number (low nibble of byte 1).
    pub dst: u8,
    /// Source register number (high nibble of byte 1).
    pub src: u8,
    /// Signed 16-bit offset.
    pub off: i16,
    /// Signed 32-bit immediate.
    pub imm: i32,
}

impl RawInsn {
    /// Builds a slot from its fields.
    pub const fn new(opc: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        RawInsn { opc, dst, src, off, imm }
    }

    /// Decodes one little-endian slot.
    pub fn from_bytes(b: [u8; INSN_SIZE]) -> Self {
        RawInsn { opc: b[0], dst: b[1] & 0x0f, src: b[1] >> 4, off: i16::from_le_bytes([b[2], b[3]]), imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]) }
    }

    /// Encodes the slot as 8 little-endian bytes.
    pub fn to_bytes(self) -> [u8; INSN_SIZE] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [self.opc, (self.dst & 0x0f) | (self.src << 4), o[0], o[1], i[0], i[1], i[2], i[3]]
    }

    /// The instruction class.
    pub fn class(self) -> u8 {
        self.opc & 0x07
    }
}

impl fmt::Debug for RawInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawInsn {{ opc: {:#04x}, dst: {}, src: {}, off: {}, imm: {} }}", self.opc, self.dst, self.src, self.off, self.imm)
    }
}

/// Splits bytecode into slots. The length must be a multiple of 8.
pub fn parse_bytecode(bytes: &[u8]) -> Result<Vec<RawInsn>, DecodeError> {
    if !bytes.len().is_multiple_of(INSN_SIZE) {
        return Err(DecodeError { insn: bytes.len() / INSN_SIZE, kind: DecodeErrorKind::Truncated { len: bytes.len() } });
    }
    Ok(bytes.chunks_exact(INSN_SIZE).map(|c| RawInsn::from_bytes(c.try_into().expect("chunk of 8"))).collect())
}

/// Encodes slots back into bytecode.
pub fn to_bytecode(insns: &[RawInsn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

/// An eBPF register, `r0` to `r10`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reg(u8);

impl Reg {
    /// Return value and helper result.
    pub const R0: Reg = Reg(0);
    /// First argument / context pointer.
    pub const R1: Reg = Reg(1);
    /// Read-only frame pointer.
    pub const FP: Reg = Reg(10);

    /// Makes a register from its number, if it names one.
    pub fn new(n: u8) -> Option<Reg> {
        (n <= 10).then_some(Reg(n))
    }

    /// The register's number.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The register's number as the 4-bit field value.
    pub fn num(self) -> u8 {
        self.0
    }
}

impl fmt::Debug for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Operand width of ALU and conditional-jump instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// 32-bit (`ALU`, `JMP32`): operates on the low halves, ALU results are zero-extended.
    W32,
    /// 64-bit (`ALU64`, `JMP`).
    W64,
}

/// Second operand of ALU, jump and store instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A register.
    Reg(Reg),
    /// The sign-extended immediate.
    Imm(i32),
}

/// Binary ALU operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    /// Unsigned division; division by zero yields 0.
    Div,
    /// Signed division (v4); division by zero yields 0.
    SDiv,
    Or,
    And,
    Lsh,
    Rsh,
    /// Unsigned modulo; modulo by zero leaves dst unchanged.
    Mod,
    /// Signed (truncated) modulo (v4).
    SMod,
    Xor,
    Mov,
    /// Move with sign extension from the low 8 bits (v4).
    MovSx8,
    /// Move with sign extension from the low 16 bits (v4).
    MovSx16,
    /// Move with sign extension from the low 32 bits (v4, 64-bit only).
    MovSx32,
    Arsh,
}

/// Byte-order conversions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// `le16/32/64`: convert to little endian (truncate on this little-endian runtime).
    ToLe,
    /// `be16/32/64`: convert to big endian.
    ToBe,
    /// `bswap16/32/64`: unconditional swap (v4).
    Swap,
}

/// Access size of loads, stores and atomics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemSize {
    B,
    H,
    W,
    DW,
}

impl MemSize {
    /// Size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            MemSize::B => 1,
            MemSize::H => 2,
            MemSize::W => 4,
            MemSize::DW => 8,
        }
    }

    fn from_bits(op: u8) -> MemSize {
        match op & 0x18 {
            0x00 => MemSize::W,
            0x08 => MemSize::H,
            0x10 => MemSize::B,
            _ => MemSize::DW,
        }
    }

    fn bits(self) -> u8 {
        match self {
            MemSize::W => 0x00,
            MemSize::H => 0x08,
            MemSize::B => 0x10,
            MemSize::DW => 0x18,
        }
    }
}

/// Conditions of conditional jumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JmpCond {
    Eq,
    Gt,
    Ge,
    Set,
    Ne,
    Sgt,
    Sge,
    Lt,
    Le,
    Slt,
    Sle,
}

impl JmpCond {
    /// Evaluates the condition on two values of the given width.
    pub fn eval(self, width: Width, a: u64, b: u64) -> bool {
        let (ua, ub, sa, sb) = match width {
            Width::W64 => (a, b, a as i64, b as i64),
            Width::W32 => (a as u32 as u64, b as u32 as u64, a as i32 as i64, b as i32 as i64),
        };
        match self {
            JmpCond::Eq => ua == ub,
            JmpCond::Ne => ua != ub,
            JmpCond::Gt => ua > ub,
            JmpCond::Ge => ua >= ub,
            JmpCond::Lt => ua < ub,
            JmpCond::Le => ua <= ub,
            JmpCond::Set => ua & ub != 0,
            JmpCond::Sgt => sa > sb,
            JmpCond::Sge => sa >= sb,
            JmpCond::Slt => sa < sb,
            JmpCond::Sle => sa <= sb,
        }
    }
}

/// Read-modify-write operations of atomic instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    Add,
    Or,
    And,
    Xor,
    /// Exchange; always fetches into `src`.
    Xchg,
    /// Compare `r0` with memory and store `src` if equal; old value into `r0`.
    CmpXchg,
}

/// What the 64-bit immediate of an `lddw` means (its `src` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LddwKind {
    /// `src = 0`: a plain 64-bit constant.
    Imm64,
    /// `src = 1` (`BPF_PSEUDO_MAP_FD`): the map with file descriptor `imm`.
    MapFd,
    /// `src = 2` (`BPF_PSEUDO_MAP_VALUE`): address of the value of map fd `imm`, plus next imm.
    MapValue,
    /// `src = 3` (`BPF_PSEUDO_BTF_ID`): a kernel variable by BTF id.
    BtfId,
    /// `src = 4` (`BPF_PSEUDO_FUNC`): a subprogram at relative offset `imm`.
    Func,
    /// `src = 5` (`BPF_PSEUDO_MAP_IDX`): the map at index `imm` of the program's map array.
    MapIdx,
    /// `src = 6` (`BPF_PSEUDO_MAP_IDX_VALUE`): value address of map index `imm`, plus next imm.
    MapIdxValue,
}

impl LddwKind {
    pub(crate) fn from_src(src: u8) -> Option<LddwKind> {
        Some(match src {
            0 => LddwKind::Imm64,
            1 => LddwKind::MapFd,
            2 => LddwKind::MapValue,
            3 => LddwKind::BtfId,
            4 => LddwKind::Func,
            5 => LddwKind::MapIdx,
            6 => LddwKind::MapIdxValue,
            _ => return None,
        })
    }

    /// The `src` field value.
    pub fn src(self) -> u8 {
        self as u8
    }
}

/// What a `call` instruction calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallTarget {
    /// A helper by id.
    Helper(u32),
    /// A bpf-to-bpf call: target is `pc + 1 + offset`.
    Local(i32),
    /// A kernel function by BTF id (not supported in userspace).
    Kfunc(u32),
}

/// A decoded instruction; one per 8-byte slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `dst = dst op src` (or `dst = src` for moves).
    Alu { width: Width, op: AluOp, dst: Reg, src: Operand },
    /// `dst = -dst`.
    Neg { width: Width, dst: Reg },
    /// Byte-order conversion of the low `bits` of `dst`.
    Endian { order: ByteOrder, bits: u32, dst: Reg },
    /// `dst = imm64`, where `kind` says how to interpret the 64-bit value (low, high halves).
    Lddw { dst: Reg, kind: LddwKind, lo: i32, hi: i32 },
    /// Second slot of an `lddw`: never executed, never a jump target.
    LddwHigh,
    /// `dst = *(size *)(base + off)`, sign-extending when `signed`.
    Load { size: MemSize, signed: bool, dst: Reg, base: Reg, off: i16 },
    /// `*(size *)(base + off) = src`.
    Store { size: MemSize, base: Reg, off: i16, src: Operand },
    /// Atomic read-modify-write of `*(size *)(base + off)` with `src`.
    Atomic { size: MemSize, op: AtomicOp, fetch: bool, base: Reg, off: i16, src: Reg },
    /// Unconditional jump to `pc + 1 + off`: `goto` (16-bit offset in `off`) or, when
    /// `long`, `gotol` (v4, `JMP32` class, 32-bit offset in `imm`).
    Ja { off: i32, long: bool },
    /// Conditional jump to `pc + 1 + off` when `dst cond src`.
    Jump { width: Width, cond: JmpCond, dst: Reg, src: Operand, off: i16 },
    /// Call a helper, a local function or a kfunc.
    Call(CallTarget),
    /// Call the helper whose id is in the register (`callx`).
    CallReg(Reg),
    /// Return `r0` from the current function.
    Exit,
}

impl Insn {
    /// The slot index targeted by a jump at `pc`, if this is a jump.
    pub fn jump_target(&self, pc: usize) -> Option<i64> {
        match *self {
            Insn::Ja { off, .. } => Some(pc as i64 + 1 + off as i64),
            Insn::Jump { off, .. } => Some(pc as i64 + 1 + off as i64),
            _ => None,
        }
    }

    /// The register this instruction writes, if any besides memory.
    pub fn written_reg(&self) -> Option<Reg> {
        match *self {
            Insn::Alu { dst, .. } | Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => Some(dst),
            Insn::Lddw { dst, .. } | Insn::Load { dst, .. } => Some(dst),
            Insn::Atomic { op: AtomicOp::CmpXchg, .. } => Some(Reg::R0),
            Insn::Atomic { fetch: true, src, .. } => Some(src),
            Insn::Call(_) | Insn::CallReg(_) => Some(Reg::R0),
            _ => None,
        }
    }
}

/// Why a slot could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("bytecode length {len} is not a multiple of 8")]
    Truncated { len: usize },
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("invalid register r{0}")]
    BadRegister(u8),
    #[error("opcode {opc:#04x}: reserved field `{field}` must be zero, is {value}")]
    ReservedField { opc: u8, field: &'static str, value: i64 },
    #[error("opcode {opc:#04x}: invalid offset {off}")]
    BadOffset { opc: u8, off: i16 },
    #[error("opcode {opc:#04x}: invalid immediate {imm}")]
    BadImmediate { opc: u8, imm: i32 },
    #[error("lddw has no second slot")]
    LddwTruncated,
    #[error("second slot of lddw is not empty")]
    LddwBadHigh,
    #[error("unknown lddw source {0}")]
    LddwBadSrc(u8),
    #[error("unknown atomic operation {0:#x}")]
    BadAtomicOp(i32),
    #[error("legacy packet access (BPF_ABS/BPF_IND) is not supported")]
    LegacyPacketAccess,
}

/// A decoding error with the index of the offending slot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insn {insn}: {kind}")]
pub struct DecodeError {
    /// Slot index.
    pub insn: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

fn reg(n: u8) -> Result<Reg, DecodeErrorKind> {
    Reg::new(n).ok_or(DecodeErrorKind::BadRegister(n))
}

fn zero(opc: u8, field: &'static str, value: i64) -> Result<(), DecodeErrorKind> {
    if value == 0 {
        Ok(())
    } else {
        Err(DecodeErrorKind::ReservedField { opc, field, value })
    }
}

/// Decodes every slot of a program.
pub fn decode(raw: &[RawInsn]) -> Result<Vec<Insn>, DecodeError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pc = 0;
    while pc < raw.len() {
        let err = |kind| DecodeError { insn: pc, kind };
        let r = raw[pc];
        if r.opc == 0x18 {
            let hi = raw.get(pc + 1).ok_or_else(|| err(DecodeErrorKind::LddwTruncated))?;
            if hi.opc != 0 || hi.dst != 0 || hi.src != 0 || hi.off != 0 {
                return Err(err(DecodeErrorKind::LddwBadHigh));
            }
            let kind = LddwKind::from_src(r.src).ok_or_else(|| err(DecodeErrorKind::LddwBadSrc(r.src)))?;
            zero(r.opc, "off", r.off as i64).map_err(err)?;
            let dst = reg(r.dst).map_err(err)?;
            out.push(Insn::Lddw { dst, kind, lo: r.imm, hi: hi.imm });
            out.push(Insn::LddwHigh);
            pc += 2;
            continue;
        }
        out.push(decode_one(r).map_err(err)?);
        pc += 1;
    }
    Ok(out)
}

/// Decodes a single-slot instruction (everything but `lddw`).
pub fn decode_one(r: RawInsn) -> Result<Insn, DecodeErrorKind> {
    let opc = r.opc;
    match r.class() {
        class::ALU | class::ALU64 => decode_alu(r),
        class::JMP | class::JMP32 => decode_jmp(r),
        class::LDX => {
            let signed = match opc & 0xe0 {
                mode::MEM => false,
                mode::MEMSX if MemSize::from_bits(opc) != MemSize::DW => true,
                _ => return Err(DecodeErrorKind::UnknownOpcode(opc)),
            };
            zero(opc, "imm", r.imm as i64)?;
            Ok(Insn::Load { size: MemSize::from_bits(opc), signed, dst: reg(r.dst)?, base: reg(r.src)?, off: r.off })
        }
        class::ST => {
            if opc & 0xe0 != mode::MEM {
                return Err(DecodeErrorKind::UnknownOpcode(opc));
            }
            zero(opc, "src", r.src as i64)?;
            Ok(Insn::Store { size: MemSize::from_bits(opc), base: reg(r.dst)?, off: r.off, src: Operand::Imm(r.imm) })
        }
        class::STX => match opc & 0xe0 {
            mode::MEM => {
                zero(opc, "imm", r.imm as i64)?;
                Ok(Insn::Store { size: MemSize::from_bits(opc), base: reg(r.dst)?, off: r.off, src: Operand::Reg(reg(r.src)?) })
            }
            mode::ATOMIC => {
                let size = MemSize::from_bits(opc);
                if !matches!(size, MemSize::W | MemSize::DW) {
                    return Err(DecodeErrorKind::UnknownOpcode(opc));
                }
                let (op, fetch) = match r.imm {
                    atomic::XCHG => (AtomicOp::Xchg, true),
                    atomic::CMPXCHG => (AtomicOp::CmpXchg, true),
                    imm => {
                        let op = match imm & !atomic::FETCH {
                            atomic::ADD => AtomicOp::Add,
                            atomic::OR => AtomicOp::Or,
                            atomic::AND => AtomicOp::And,
                            atomic::XOR => AtomicOp::Xor,
                            _ => return Err(DecodeErrorKind::BadAtomicOp(imm)),
                        };
                        (op, imm & atomic::FETCH != 0)
                    }
                };
                Ok(Insn::Atomic { size, op, fetch, base: reg(r.dst)?, off: r.off, src: reg(r.src)? })
            }
            _ => Err(DecodeErrorKind::UnknownOpcode(opc)),
        },
        _ => match opc & 0xe0 {
            mode::ABS | mode::IND => Err(DecodeErrorKind::LegacyPacketAccess),
            _ => Err(DecodeErrorKind::UnknownOpcode(opc)),
        },
    }
}

fn source(r: RawInsn) -> Result<Operand, DecodeErrorKind> {
    if r.opc & SRC_REG != 0 {
        zero(r.opc, "imm", r.imm as i64)?;
        Ok(Operand::Reg(reg(r.src)?))
    } else {
        zero(r.opc, "src", r.src as i64)?;
        Ok(Operand::Imm(r.imm))
    }
}

fn decode_alu(r: RawInsn) -> Result<Insn, DecodeErrorKind> {
    let opc = r.opc;
    let width = if r.class() == class::ALU64 { Width::W64 } else { Width::W32 };
    let dst = reg(r.dst)?;
    let op = match opc & 0xf0 {
        0x00 => AluOp::Add,
        0x10 => AluOp::Sub,
        0x20 => AluOp::Mul,
        0x30 | 0x90 => {
            let signed = match r.off {
                0 => false,
                1 => true,
                off => return Err(DecodeErrorKind::BadOffset { opc, off }),
            };
            let div = opc & 0xf0 == 0x30;
            let src = source(r)?;
            let op = match (div, signed) {
                (true, false) => AluOp::Div,
                (true, true) => AluOp::SDiv,
                (false, false) => AluOp::Mod,
                (false, true) => AluOp::SMod,
            };
            return Ok(Insn::Alu { width, op, dst, src });
        }
        0x40 => AluOp::Or,
        0x50 => AluOp::And,
        0x60 => AluOp::Lsh,
        0x70 => AluOp::Rsh,
        0x80 => {
            if opc & SRC_REG != 0 {
                return Err(DecodeErrorKind::UnknownOpcode(opc));
            }
            zero(opc, "src", r.src as i64)?;
            zero(opc, "off", r.off as i64)?;
            zero(opc, "imm", r.imm as i64)?;
            return Ok(Insn::Neg { width, dst });
        }
        0xa0 => AluOp::Xor,
        0xb0 => {
            let op = match (r.off, width) {
                (0, _) => AluOp::Mov,
                (8, _) => AluOp::MovSx8,
                (16, _) => AluOp::MovSx16,
                (32, Width::W64) => AluOp::MovSx32,
                (off, _) => return Err(DecodeErrorKind::BadOffset { opc, off }),
            };
            if op != AluOp::Mov && opc & SRC_REG == 0 {
                return Err(DecodeErrorKind::BadOffset { opc, off: r.off });
            }
            return Ok(Insn::Alu { width, op, dst, src: source(r)? });
        }
        0xc0 => AluOp::Arsh,
        0xd0 => {
            let order = match (width, opc & SRC_REG != 0) {
                (Width::W32, false) => ByteOrder::ToLe,
                (Width::W32, true) => ByteOrder::ToBe,
                (Width::W64, false) => ByteOrder::Swap,
                (Width::W64, true) => return Err(DecodeErrorKind::UnknownOpcode(opc)),
            };
            if !matches!(r.imm, 16 | 32 | 64) {
                return Err(DecodeErrorKind::BadImmediate { opc, imm: r.imm });
            }
            zero(opc, "src", r.src as i64)?;
            zero(opc, "off", r.off as i64)?;
            return Ok(Insn::Endian { order, bits: r.imm as u32, dst });
        }
        _ => return Err(DecodeErrorKind::UnknownOpcode(opc)),
    };
    zero(opc, "off", r.off as i64)?;
    Ok(Insn::Alu { width, op, dst, src: source(r)? })
}

fn decode_jmp(r: RawInsn) -> Result<Insn, DecodeErrorKind> {
    let opc = r.opc;
    let jmp32 = r.class() == class::JMP32;
    let width = if jmp32 { Width::W32 } else { Width::W64 };
    let cond = match opc & 0xf0 {
        0x00 => {
            if opc & SRC_REG != 0 {
                return Err(DecodeErrorKind::UnknownOpcode(opc));
            }
            zero(opc, "dst", r.dst as i64)?;
            zero(opc, "src", r.src as i64)?;
            return if jmp32 {
                zero(opc, "off", r.off as i64)?;
                Ok(Insn::Ja { off: r.imm, long: true })
            } else {
                zero(opc, "imm", r.imm as i64)?;
                Ok(Insn::Ja { off: r.off as i32, long: false })
            };
        }
        0x10 => JmpCond::Eq,
        0x20 => JmpCond::Gt,
        0x30 => JmpCond::Ge,
        0x40 => JmpCond::Set,
        0x50 => JmpCond::Ne,
        0x60 => JmpCond::Sgt,
        0x70 => JmpCond::Sge,
        0x80 if !jmp32 => {
            zero(opc, "off", r.off as i64)?;
            if opc & SRC_REG != 0 {
                zero(opc, "imm", r.imm as i64)?;
                zero(opc, "src", r.src as i64)?;
                return Ok(Insn::CallReg(reg(r.dst)?));
            }
            zero(opc, "dst", r.dst as i64)?;
            return Ok(Insn::Call(match r.src {
                call_src::HELPER => CallTarget::Helper(r.imm as u32),
                call_src::LOCAL => CallTarget::Local(r.imm),
                call_src::KFUNC => CallTarget::Kfunc(r.imm as u32),
                src => return Err(DecodeErrorKind::ReservedField { opc, field: "src", value: src as i64 }),
            }));
        }
        0x90 if !jmp32 && opc & SRC_REG == 0 => {
            zero(opc, "dst", r.dst as i64)?;
            zero(opc, "src", r.src as i64)?;
            zero(opc, "off", r.off as i64)?;
            zero(opc, "imm", r.imm as i64)?;
            return Ok(Insn::Exit);
        }
        0xa0 => JmpCond::Lt,
        0xb0 => JmpCond::Le,
        0xc0 => JmpCond::Slt,
        0xd0 => JmpCond::Sle,
        _ => return Err(DecodeErrorKind::UnknownOpcode(opc)),
    };
    Ok(Insn::Jump { width, cond, dst: reg(r.dst)?, src: source(r)?, off: r.off })
}

/// Encodes a decoded program back into slots (inverse of [`decode`]).
pub fn encode(insns: &[Insn]) -> Vec<RawInsn> {
    let mut out = Vec::with_capacity(insns.len());
    for insn in insns {
        match *insn {
            Insn::Lddw { dst, kind, lo, hi } => {
                out.push(RawInsn::new(0x18, dst.num(), kind.src(), 0, lo));
                out.push(RawInsn::new(0, 0, 0, 0, hi));
            }
            Insn::LddwHigh => {}
            other => out.push(encode_one(other)),
        }
    }
    out
}

fn with_source(opc: u8, dst: u8, src: Operand, off: i16) -> RawInsn {
    match src {
        Operand::Reg(s) => RawInsn::new(opc | SRC_REG, dst, s.num(), off, 0),
        Operand::Imm(i) => RawInsn::new(opc, dst, 0, off, i),
    }
}

/// Encodes one single-slot instruction (not `lddw`).
pub fn encode_one(insn: Insn) -> RawInsn {
    match insn {
        Insn::Alu { width, op, dst, src } => {
            let cls = if width == Width::W64 { class::ALU64 } else { class::ALU };
            let (code, off) = match op {
                AluOp::Add => (0x00, 0),
                AluOp::Sub => (0x10, 0),
                AluOp::Mul => (0x20, 0),
                AluOp::Div => (0x30, 0),
                AluOp::SDiv => (0x30, 1),
                AluOp::Or => (0x40, 0),
                AluOp::And => (0x50, 0),
                AluOp::Lsh => (0x60, 0),
                AluOp::Rsh => (0x70, 0),
                AluOp::Mod => (0x90, 0),
                AluOp::SMod => (0x90, 1),
                AluOp::Xor => (0xa0, 0),
                AluOp::Mov => (0xb0, 0),
                AluOp::MovSx8 => (0xb0, 8),
                AluOp::MovSx16 => (0xb0, 16),
                AluOp::MovSx32 => (0xb0, 32),
                AluOp::Arsh => (0xc0, 0),
            };
            with_source(cls | code, dst.num(), src, off)
        }
        Insn::Neg { width, dst } => {
            let cls = if width == Width::W64 { class::ALU64 } else { class::ALU };
            RawInsn::new(cls | 0x80, dst.num(), 0, 0, 0)
        }
        Insn::Endian { order, bits, dst } => {
            let opc = match order {
                ByteOrder::ToLe => 0xd4,
                ByteOrder::ToBe => 0xdc,
                ByteOrder::Swap => 0xd7,
            };
            RawInsn::new(opc, dst.num(), 0, 0, bits as i32)
        }
        Insn::Lddw { dst, kind, lo, .. } => RawInsn::new(0x18, dst.num(), kind.src(), 0, lo),
        Insn::LddwHigh => RawInsn::default(),
        Insn::Load { size, signed, dst, base, off } => {
            let m = if signed { mode::MEMSX } else { mode::MEM };
            RawInsn::new(class::LDX | m | size.bits(), dst.num(), base.num(), off, 0)
        }
        Insn::Store { size, base, off, src } => match src {
            Operand::Imm(i) => RawInsn::new(class::ST | mode::MEM | size.bits(), base.num(), 0, off, i),
            Operand::Reg(s) => RawInsn::new(class::STX | mode::MEM | size.bits(), base.num(), s.num(), off, 0),
        },
        Insn::Atomic { size, op, fetch, base, off, src } => {
            let imm = match op {
                AtomicOp::Xchg => atomic::XCHG,
                AtomicOp::CmpXchg => atomic::CMPXCHG,
                AtomicOp::Add => atomic::ADD | if fetch { atomic::FETCH } else { 0 },
                AtomicOp::Or => atomic::OR | if fetch { atomic::FETCH } else { 0 },
                AtomicOp::And => atomic::AND | if fetch { atomic::FETCH } else { 0 },
                AtomicOp::Xor => atomic::XOR | if fetch { atomic::FETCH } else { 0 },
            };
            RawInsn::new(class::STX | mode::ATOMIC | size.bits(), base.num(), src.num(), off, imm)
        }
        Insn::Ja { off, long: true } => RawInsn::new(class::JMP32, 0, 0, 0, off),
        Insn::Ja { off, long: false } => RawInsn::new(class::JMP, 0, 0, off as i16, 0),
        Insn::Jump { width, cond, dst, src, off } => {
            let cls = if width == Width::W64 { class::JMP } else { class::JMP32 };
            let code = match cond {
                JmpCond::Eq => 0x10,
                JmpCond::Gt => 0x20,
                JmpCond::Ge => 0x30,
                JmpCond::Set => 0x40,
                JmpCond::Ne => 0x50,
                JmpCond::Sgt => 0x60,
                JmpCond::Sge => 0x70,
                JmpCond::Lt => 0xa0,
                JmpCond::Le => 0xb0,
                JmpCond::Slt => 0xc0,
                JmpCond::Sle => 0xd0,
            };
            with_source(cls | code, dst.num(), src, off)
        }
        Insn::Call(t) => match t {
            CallTarget::Helper(id) => RawInsn::new(0x85, 0, call_src::HELPER, 0, id as i32),
            CallTarget::Local(off) => RawInsn::new(0x85, 0, call_src::LOCAL, 0, off),
            CallTarget::Kfunc(id) => RawInsn::new(0x85, 0, call_src::KFUNC, 0, id as i32),
        },
        Insn::CallReg(r) => RawInsn::new(0x8d, r.num(), 0, 0, 0),
        Insn::Exit => RawInsn::new(0x95, 0, 0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_byte_round_trips_or_errors() {
        // Every opcode with a few field patterns either fails to decode or re-encodes exactly.
        for opc in 0..=255u8 {
            for (dst, src, off, imm) in [(1, 2, 0, 0), (3, 0, 0, 7), (0, 0, 1, 0), (2, 4, 8, 0), (5, 0, 0, 32), (0, 1, 0, 3)] {
                let raw = RawInsn::new(opc, dst, src, off, imm);
                if opc == 0x18 {
                    continue;
                }
                if let Ok(insn) = decode_one(raw) {
                    assert_eq!(encode_one(insn), raw, "{insn:?}");
                }
            }
        }
    }

    #[test]
    fn bytes_round_trip() {
        let r = RawInsn::new(0x61, 3, 10, -8, 0x12345678);
        assert_eq!(RawInsn::from_bytes(r.to_bytes()), r);
        assert_eq!(r.to_bytes(), [0x61, 0xa3, 0xf8, 0xff, 0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn truncated_bytecode_is_an_error() {
        let e = parse_bytecode(&[0; 12]).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Truncated { len: 12 });
    }

    #[test]
    fn lddw_needs_its_second_slot() {
        let e = decode(&[RawInsn::new(0x18, 1, 0, 0, 5)]).unwrap_err();
        assert_eq!(e, DecodeError { insn: 0, kind: DecodeErrorKind::LddwTruncated });
    }
}
