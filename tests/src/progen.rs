//! Random eBPF programs for differential testing (interpreter vs JIT).
//!
//! Programs are built so that both engines see the same inputs: r9 holds the context pointer,
//! r8 points 64 bytes below r10, the prologue zeroes the 80 bytes below r10 and loads r0-r7
//! with edge-case values, and r10-based accesses stay inside that zeroed area. Everything else is random: every ALU operation with
//! edge-case operands, loads/stores/atomics that are sometimes out of bounds or misaligned,
//! forward and backward jumps (the loop budget ends runaway loops), helper calls, `callx` and
//! local calls to a random callee.

use bpftime_vm::insn::{encode, AluOp, AtomicOp, ByteOrder, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, RawInsn, Reg, Width};
use proptest::prelude::*;

/// An instruction before jump offsets are known.
#[derive(Clone, Debug)]
pub enum Item {
    Plain(Insn),
    /// Jump forward over `skip` items (clamped to the function end).
    JumpFwd {
        cond: Option<(Width, JmpCond, Reg, Operand)>,
        skip: usize,
    },
    /// Jump back `back` items (clamped to the function start) when the condition holds.
    JumpBack {
        cond: Option<(Width, JmpCond, Reg, Operand)>,
        back: usize,
    },
    /// Call the generated callee.
    CallLocal,
    /// `reg = id; callx reg` (ids 1, 2, 3, 5 exist; 0 and 7 do not).
    CallX {
        reg: Reg,
        id: i32,
    },
    /// An access through `base + idx` with `idx` bounded first (the verifier's range analysis
    /// proves some of these in bounds): `idx &= bound` or `if idx > bound` skip it, then
    /// `idx += base` and the access at `idx + off`.
    Indexed {
        idx: Reg,
        base: Reg,
        bound: i32,
        masked: bool,
        access: Insn,
    },
    /// A counted loop (see `bpftime_vm::loops`): `body` (which leaves `v` alone) and `v += step`,
    /// repeated while `v < bound` (`<=` when `inclusive`), tested at the bottom, or at the top
    /// as `if v > bound` (`>=`) leaving the loop.
    Counted {
        v: Reg,
        step: i32,
        bound: i32,
        top_test: bool,
        inclusive: bool,
        body: Vec<Insn>,
    },
    /// A walked loop (see `bpftime_vm::walks`): `n &= mask` (unless `mask < 0`), `p = base +
    /// start`, then `access` (through `p`), `p += stride` and the counter's step while the
    /// test holds, tested at the bottom, or at the top (its negation leaving the loop). Up:
    /// `v = 0`, `v += 1` while `v COND n` (`<`, `<=`, `!=`); down: `v = n`, `v += -1` while
    /// `v COND 0` (`>`, `>=`, `!=`). The bound comes from a random register, so walks often run
    /// out of their region (the context, or for `base` r8 the stack, written only).
    Walk {
        p: Reg,
        v: Reg,
        n: Reg,
        mask: i32,
        base: Reg,
        start: i16,
        stride: i32,
        top_test: bool,
        down: bool,
        cond: JmpCond,
        access: Insn,
    },
    /// A map lookup (helper 6: a 16-byte value inside the context, or null) with the `u32`
    /// key from `key` stored at r10-4, then, unless null, an access at `r0 + (idx & mask) + off`
    /// (the verifier proves some of these within the value).
    Lookup {
        key: Operand,
        idx: Reg,
        mask: i32,
        access: Insn,
    },
}

fn reg(n: u8) -> Reg {
    Reg::new(n).expect("valid register")
}

/// Registers random instructions write: r0-r7 (r8, r9 hold pointers, r10 is read-only).
fn data_reg() -> impl Strategy<Value = Reg> {
    (0u8..8).prop_map(reg)
}

fn any_reg() -> impl Strategy<Value = Reg> {
    (0u8..10).prop_map(reg)
}

fn interesting_imm() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(1), Just(-1), Just(i32::MIN), Just(i32::MAX), Just(7), Just(31), Just(32), Just(63), Just(64), any::<i32>(), -16i32..16,]
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MIN as u64),
        Just(i64::MAX as u64),
        Just(0x8000_0000),
        Just(0xffff_ffff),
        Just(i32::MIN as i64 as u64),
        Just(0x1_0000_0000),
        0u64..64,
        any::<u64>(),
    ]
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![any_reg().prop_map(Operand::Reg), interesting_imm().prop_map(Operand::Imm)]
}

fn width() -> impl Strategy<Value = Width> {
    prop_oneof![Just(Width::W32), Just(Width::W64)]
}

fn alu_op() -> impl Strategy<Value = AluOp> {
    prop_oneof![
        Just(AluOp::Add),
        Just(AluOp::Sub),
        Just(AluOp::Mul),
        Just(AluOp::Div),
        Just(AluOp::SDiv),
        Just(AluOp::Or),
        Just(AluOp::And),
        Just(AluOp::Lsh),
        Just(AluOp::Rsh),
        Just(AluOp::Mod),
        Just(AluOp::SMod),
        Just(AluOp::Xor),
        Just(AluOp::Mov),
        Just(AluOp::Arsh),
    ]
}

fn mem_size() -> impl Strategy<Value = MemSize> {
    prop_oneof![Just(MemSize::B), Just(MemSize::H), Just(MemSize::W), Just(MemSize::DW)]
}

fn cond() -> impl Strategy<Value = (Width, JmpCond, Reg, Operand)> {
    let c = prop_oneof![
        Just(JmpCond::Eq),
        Just(JmpCond::Ne),
        Just(JmpCond::Gt),
        Just(JmpCond::Ge),
        Just(JmpCond::Lt),
        Just(JmpCond::Le),
        Just(JmpCond::Set),
        Just(JmpCond::Sgt),
        Just(JmpCond::Sge),
        Just(JmpCond::Slt),
        Just(JmpCond::Sle),
    ];
    (width(), c, any_reg(), operand())
}

/// A base register and offset: r9 (context, 64 bytes), r8 (stack pointer copy, checked at run
/// time) or r10 (statically checked, inside the zeroed area). Offsets stray out of bounds now
/// and then.
fn address(size: MemSize) -> impl Strategy<Value = (Reg, i16)> {
    let n = size.bytes() as i16;
    prop_oneof![
        4 => (-8i16..72).prop_map(|o| (reg(9), o)),
        2 => (-16i16..72).prop_map(|o| (reg(8), o)),
        2 => (1i16..=(80 / n)).prop_map(move |k| (Reg::FP, -k * n)),
    ]
}

fn alu() -> impl Strategy<Value = Insn> {
    prop_oneof![
        8 => (width(), alu_op(), data_reg(), operand()).prop_map(|(width, op, dst, src)| Insn::Alu { width, op, dst, src }),
        1 => (width(), prop_oneof![Just(AluOp::MovSx8), Just(AluOp::MovSx16), Just(AluOp::MovSx32)], data_reg(), any_reg())
            .prop_map(|(w, op, dst, s)| {
                let width = if op == AluOp::MovSx32 { Width::W64 } else { w };
                Insn::Alu { width, op, dst, src: Operand::Reg(s) }
            }),
        1 => (width(), data_reg()).prop_map(|(width, dst)| Insn::Neg { width, dst }),
        1 => (prop_oneof![Just(ByteOrder::ToLe), Just(ByteOrder::ToBe), Just(ByteOrder::Swap)], prop_oneof![Just(16u32), Just(32), Just(64)], data_reg())
            .prop_map(|(order, bits, dst)| Insn::Endian { order, bits, dst }),
        1 => (data_reg(), any::<i32>(), any::<i32>()).prop_map(|(dst, lo, hi)| Insn::Lddw { dst, kind: LddwKind::Imm64, lo, hi }),
    ]
}

fn memory() -> impl Strategy<Value = Insn> {
    let load = (mem_size(), any::<bool>(), data_reg()).prop_flat_map(|(size, signed, dst)| {
        address(size).prop_map(move |(base, off)| Insn::Load { size, signed: signed && size != MemSize::DW, dst, base, off })
    });
    let store = (mem_size(), operand()).prop_flat_map(|(size, src)| address(size).prop_map(move |(base, off)| Insn::Store { size, base, off, src }));
    let atomic_op = prop_oneof![
        Just((AtomicOp::Add, false)),
        Just((AtomicOp::Or, false)),
        Just((AtomicOp::And, false)),
        Just((AtomicOp::Xor, false)),
        Just((AtomicOp::Add, true)),
        Just((AtomicOp::Or, true)),
        Just((AtomicOp::And, true)),
        Just((AtomicOp::Xor, true)),
        Just((AtomicOp::Xchg, true)),
        Just((AtomicOp::CmpXchg, true)),
    ];
    let atomic = (prop_oneof![Just(MemSize::W), Just(MemSize::DW)], atomic_op, data_reg(), any::<bool>()).prop_flat_map(|(size, (op, fetch), src, aligned)| {
        address(size).prop_map(move |(base, off)| {
            let n = size.bytes() as i16;
            // Mostly aligned; r10-based offsets are multiples of the size already.
            let off = if aligned && base != Reg::FP { off - off.rem_euclid(n) } else { off };
            Insn::Atomic { size, op, fetch, base, off, src }
        })
    });
    prop_oneof![3 => load, 3 => store, 2 => atomic]
}

/// An indexed access: the context (64 bytes) with offsets that sometimes stray out of it,
/// or the zeroed 80 bytes below r10, never left (the stack beyond holds what earlier runs
/// left there, which differs between engines).
fn indexed() -> impl Strategy<Value = Item> {
    let ctx = (prop_oneof![Just(15), Just(31), Just(56), Just(63), Just(127)], -8i16..48);
    let stack = (prop_oneof![Just(15), Just(31), Just(63)], Just(-80i16));
    (
        prop_oneof![3 => ctx.prop_map(|(b, o)| (reg(9), b, o)), 1 => stack.prop_map(|(b, o)| (Reg::FP, b, o))],
        data_reg(),
        mem_size(),
        0u8..3,
        any::<bool>(),
        data_reg(),
    )
        .prop_map(|((base, bound, off), idx, size, kind, masked, dst)| {
            // Stack accesses stay inside the zeroed area: `bound + off + size <= 0`.
            let off = if base == Reg::FP { off.max(-80) } else { off };
            let off = if base == Reg::FP && bound as i16 + off + size.bytes() as i16 > 0 { -(bound as i16) - size.bytes() as i16 } else { off };
            let access = match kind {
                0 => Insn::Load { size, signed: false, dst, base: idx, off },
                1 => Insn::Store { size, base: idx, off, src: Operand::Reg(dst) },
                _ => Insn::Atomic { size: MemSize::DW, op: AtomicOp::Add, fetch: false, base: idx, off: off & !7, src: dst },
            };
            Item::Indexed { idx, base, bound, masked, access }
        })
}

/// A lookup and an access into the value it returns.
fn lookup() -> impl Strategy<Value = Item> {
    let key = prop_oneof![3 => (0i32..6).prop_map(Operand::Imm), 1 => data_reg().prop_map(Operand::Reg)];
    (key, data_reg(), prop_oneof![Just(0), Just(7), Just(8), Just(15)], -4i16..20, mem_size(), 0u8..3, data_reg()).prop_map(
        |(key, idx, mask, off, size, kind, other)| {
            let access = match kind {
                0 => Insn::Load { size, signed: false, dst: other, base: Reg::R0, off },
                1 => Insn::Store { size, base: Reg::R0, off, src: Operand::Reg(other) },
                _ => Insn::Atomic { size: MemSize::DW, op: AtomicOp::Add, fetch: false, base: Reg::R0, off: off & !7, src: other },
            };
            Item::Lookup { key, idx, mask, access }
        },
    )
}

fn counted() -> impl Strategy<Value = Item> {
    (
        data_reg(),
        1i32..5,
        prop_oneof![4 => 0i32..40, 1 => interesting_imm()],
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(prop_oneof![3 => alu(), 1 => memory()], 0..4),
    )
        .prop_map(|(v, step, bound, top_test, inclusive, body)| {
            let body = body.into_iter().filter(|i| i.written_reg() != Some(v) && !matches!(i, Insn::Lddw { .. })).collect();
            Item::Counted { v, step, bound, top_test, inclusive, body }
        })
}

fn walk() -> impl Strategy<Value = Item> {
    let regs = Just((0u8..8).collect::<Vec<_>>()).prop_shuffle().prop_map(|r| (reg(r[0]), reg(r[1]), reg(r[2]), reg(r[3])));
    let stride = prop_oneof![Just(1), Just(2), Just(4), Just(8), Just(-1), Just(-4), Just(-8), Just(0)];
    let mask = prop_oneof![Just(3), Just(7), Just(15), Just(63), Just(-1)];
    let count = prop_oneof![
        Just((false, JmpCond::Lt)),
        Just((false, JmpCond::Le)),
        Just((false, JmpCond::Ne)),
        Just((true, JmpCond::Gt)),
        Just((true, JmpCond::Ge)),
        Just((true, JmpCond::Ne)),
    ];
    (regs, mask, any::<bool>(), -8i16..64, stride, any::<bool>(), count, mem_size(), 0u8..3, -8i16..16).prop_map(
        |((p, v, n, other), mask, on_stack, start, stride, top_test, (down, cond), size, kind, off)| {
            let (base, start) = if on_stack { (reg(8), start - 16) } else { (reg(9), start) };
            let access = match kind {
                _ if on_stack => Insn::Store { size, base: p, off, src: Operand::Reg(other) },
                0 => Insn::Load { size, signed: false, dst: other, base: p, off },
                1 => Insn::Store { size, base: p, off, src: Operand::Reg(other) },
                _ => Insn::Atomic { size: MemSize::DW, op: AtomicOp::Add, fetch: false, base: p, off: off & !7, src: other },
            };
            Item::Walk { p, v, n, mask, base, start, stride, top_test, down, cond, access }
        },
    )
}

fn item(with_callee: bool, with_lookups: bool) -> impl Strategy<Value = Item> {
    let call_weight = if with_callee { 1 } else { 0 };
    prop_oneof![
        3 => indexed(),
        if with_lookups { 2 } else { 0 } => lookup(),
        20 => alu().prop_map(Item::Plain),
        8 => memory().prop_map(Item::Plain),
        5 => (proptest::option::weighted(0.8, cond()), 0usize..6).prop_map(|(cond, skip)| Item::JumpFwd { cond, skip }),
        // A loop always has a way out the verifier can see (it refuses one without, as the
        // kernel does); `if r10 != 0` is one a run never takes, ended by the loop budget.
        1 => (proptest::option::weighted(0.9, cond()), 1usize..6).prop_map(|(cond, back)| Item::JumpBack {
            cond: Some(cond.unwrap_or((Width::W64, JmpCond::Ne, reg(10), Operand::Imm(0)))),
            back
        }),
        4 => prop_oneof![counted().boxed(), walk().boxed()],
        1 => prop_oneof![Just(Item::Plain(Insn::Call(CallTarget::Helper(1)))), Just(Item::Plain(Insn::Call(CallTarget::Helper(2))))],
        1 => (data_reg(), prop_oneof![4 => Just(1), 4 => Just(2), 1 => Just(5), 1 => Just(0), 1 => Just(7)])
            .prop_map(|(reg, id)| Item::CallX { reg, id }),
        call_weight => Just(Item::CallLocal),
    ]
}

/// A whole generated program: main body and an optional callee body.
#[derive(Clone, Debug)]
pub struct GenProgram {
    /// Initial values of r0-r7.
    pub init: Vec<u64>,
    pub main: Vec<Item>,
    pub callee: Option<Vec<Item>>,
    pub mem: Vec<u8>,
}

/// Random programs with their 64-byte context; they call helpers 1, 2, 3, 5 and 6 (a map
/// lookup through `lddw map_fd(1)`: verify them with `datatest::TestMaps`).
pub fn program() -> impl Strategy<Value = GenProgram> {
    programs(true)
}

/// As [`program`], without map lookups (for engines that have no helper 6).
pub fn program_without_lookups() -> impl Strategy<Value = GenProgram> {
    programs(false)
}

fn programs(with_lookups: bool) -> impl Strategy<Value = GenProgram> {
    any::<bool>().prop_flat_map(move |with_callee| {
        let callee = if with_callee {
            // The callee must not touch the stack through r10 (its frame is not zeroed).
            proptest::collection::vec(item(false, with_lookups).prop_filter("no r10 access in callee", |i| !uses_fp(i)), 1..12).prop_map(Some).boxed()
        } else {
            Just(None).boxed()
        };
        (
            proptest::collection::vec(interesting_u64(), 8),
            proptest::collection::vec(item(with_callee, with_lookups), 1..40),
            callee,
            proptest::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(init, main, callee, mem)| GenProgram { init, main, callee, mem })
    })
}

/// Whether an item reads or writes the stack: a callee's frame is not zeroed, so a callee
/// built from such items would read whatever the caller left there.
fn uses_fp(i: &Item) -> bool {
    let fp_access = |i: &Insn| matches!(i, Insn::Load { base: Reg::FP, .. } | Insn::Store { base: Reg::FP, .. } | Insn::Atomic { base: Reg::FP, .. });
    match i {
        Item::Plain(i) => fp_access(i),
        Item::Counted { body, .. } => body.iter().any(fp_access),
        Item::Indexed { base: Reg::FP, .. } | Item::Lookup { .. } => true,
        _ => false,
    }
}

fn item_slots(it: &Item) -> usize {
    match it {
        Item::Plain(i) => slots(i),
        Item::CallX { .. } => 2,
        Item::Indexed { .. } => 3,
        Item::Lookup { .. } => 10,
        Item::Counted { body, top_test, .. } => body.len() + if *top_test { 3 } else { 2 },
        Item::Walk { mask, top_test, .. } => 7 + (*mask >= 0) as usize + *top_test as usize,
        _ => 1,
    }
}

fn slots(i: &Insn) -> usize {
    if matches!(i, Insn::Lddw { .. }) {
        2
    } else {
        1
    }
}

/// Lowers one function body: `items` starting at slot `base`, ending with `exit`.
/// `callee_slot` is the callee's first slot.
fn lower(items: &[Item], base: usize, callee_slot: usize, out: &mut Vec<Insn>) {
    // Slot of each item (and of the final exit).
    let mut starts = Vec::with_capacity(items.len() + 1);
    let mut s = base;
    for it in items {
        starts.push(s);
        s += item_slots(it);
    }
    starts.push(s);
    for (k, it) in items.iter().enumerate() {
        let pc = starts[k] as i64;
        let insn = match it {
            Item::Plain(i) => *i,
            Item::JumpFwd { cond, skip } => {
                let target = starts[(k + 1 + skip).min(items.len())] as i64;
                jump(*cond, (target - pc - 1) as i32)
            }
            Item::JumpBack { cond, back } => {
                let target = starts[k.saturating_sub(*back)] as i64;
                jump(*cond, (target - pc - 1) as i32)
            }
            Item::Counted { v, step, bound, top_test, inclusive, body } => {
                let n = body.len() as i32;
                let step = Insn::Alu { width: Width::W64, op: AluOp::Add, dst: *v, src: Operand::Imm(*step) };
                let test = |cond, off| Insn::Jump { width: Width::W64, cond, dst: *v, src: Operand::Imm(*bound), off };
                if *top_test {
                    out.push(test(if *inclusive { JmpCond::Ge } else { JmpCond::Gt }, (n + 2) as i16));
                    out.extend_from_slice(body);
                    out.push(step);
                    Insn::Ja { off: -(n + 3), long: false }
                } else {
                    out.extend_from_slice(body);
                    out.push(step);
                    test(if *inclusive { JmpCond::Le } else { JmpCond::Lt }, -(n as i16 + 2))
                }
            }
            Item::Walk { p, v, n, mask, base, start, stride, top_test, down, cond, access } => {
                let alu = |op, dst, src| Insn::Alu { width: Width::W64, op, dst, src };
                if *mask >= 0 {
                    out.push(alu(AluOp::And, *n, Operand::Imm(*mask)));
                }
                out.push(alu(AluOp::Mov, *p, Operand::Reg(*base)));
                out.push(alu(AluOp::Add, *p, Operand::Imm(*start as i32)));
                let (first, bound, step) = if *down { (Operand::Reg(*n), Operand::Imm(0), -1) } else { (Operand::Imm(0), Operand::Reg(*n), 1) };
                out.push(alu(AluOp::Mov, *v, first));
                let test = |cond, off| Insn::Jump { width: Width::W64, cond, dst: *v, src: bound, off };
                if *top_test {
                    let leave = match cond {
                        JmpCond::Lt => JmpCond::Ge,
                        JmpCond::Le => JmpCond::Gt,
                        JmpCond::Gt => JmpCond::Le,
                        JmpCond::Ge => JmpCond::Lt,
                        _ => JmpCond::Eq,
                    };
                    out.push(test(leave, 4));
                }
                out.push(*access);
                out.push(alu(AluOp::Add, *p, Operand::Imm(*stride)));
                out.push(alu(AluOp::Add, *v, Operand::Imm(step)));
                if *top_test {
                    Insn::Ja { off: -5, long: false }
                } else {
                    test(*cond, -4)
                }
            }
            Item::CallLocal => Insn::Call(CallTarget::Local((callee_slot as i64 - pc - 1) as i32)),
            Item::CallX { reg, id } => {
                out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: *reg, src: Operand::Imm(*id) });
                Insn::CallReg(*reg)
            }
            Item::Indexed { idx, base, bound, masked, access } => {
                out.push(if *masked {
                    Insn::Alu { width: Width::W64, op: AluOp::And, dst: *idx, src: Operand::Imm(*bound) }
                } else {
                    Insn::Jump { width: Width::W64, cond: JmpCond::Gt, dst: *idx, src: Operand::Imm(*bound), off: 2 }
                });
                out.push(Insn::Alu { width: Width::W64, op: AluOp::Add, dst: *idx, src: Operand::Reg(*base) });
                *access
            }
            Item::Lookup { key, idx, mask, access } => {
                let r = |n| reg(n);
                out.push(Insn::Store { size: MemSize::W, base: Reg::FP, off: -4, src: *key });
                out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: r(2), src: Operand::Reg(Reg::FP) });
                out.push(Insn::Alu { width: Width::W64, op: AluOp::Add, dst: r(2), src: Operand::Imm(-4) });
                out.push(Insn::Lddw { dst: r(1), kind: LddwKind::MapFd, lo: 1, hi: 0 });
                out.push(Insn::LddwHigh);
                out.push(Insn::Call(CallTarget::Helper(6)));
                out.push(Insn::Jump { width: Width::W64, cond: JmpCond::Eq, dst: Reg::R0, src: Operand::Imm(0), off: 3 });
                out.push(Insn::Alu { width: Width::W64, op: AluOp::And, dst: *idx, src: Operand::Imm(*mask) });
                // idx may be r0 itself: then the pointer is masked, and no longer one.
                out.push(Insn::Alu { width: Width::W64, op: AluOp::Add, dst: Reg::R0, src: Operand::Reg(*idx) });
                *access
            }
        };
        out.push(insn);
        if matches!(insn, Insn::Lddw { .. }) {
            out.push(Insn::LddwHigh);
        }
    }
    out.push(Insn::Exit);
}

fn jump(cond: Option<(Width, JmpCond, Reg, Operand)>, off: i32) -> Insn {
    match cond {
        None => Insn::Ja { off, long: false },
        Some((width, cond, dst, src)) => Insn::Jump { width, cond, dst, src, off: off as i16 },
    }
}

impl GenProgram {
    /// The program's bytecode.
    pub fn bytecode(&self) -> Vec<RawInsn> {
        let mut out = Vec::new();
        // Prologue: r9 = context, r8 = r10 - 64, zero the 80 bytes below r10.
        out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: reg(9), src: Operand::Reg(reg(1)) });
        out.push(Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: reg(8), src: Operand::Reg(Reg::FP) });
        out.push(Insn::Alu { width: Width::W64, op: AluOp::Add, dst: reg(8), src: Operand::Imm(-64) });
        for k in 1..=10 {
            out.push(Insn::Store { size: MemSize::DW, base: Reg::FP, off: -8 * k, src: Operand::Imm(0) });
        }
        for (r, v) in self.init.iter().enumerate() {
            out.push(Insn::Lddw { dst: reg(r as u8), kind: LddwKind::Imm64, lo: *v as u32 as i32, hi: (*v >> 32) as u32 as i32 });
            out.push(Insn::LddwHigh);
        }
        let main_slots: usize = self.main.iter().map(item_slots).sum::<usize>() + 1;
        let callee_slot = out.len() + main_slots;
        let base = out.len();
        lower(&self.main, base, callee_slot, &mut out);
        if let Some(callee) = &self.callee {
            lower(callee, callee_slot, callee_slot, &mut out);
        }
        encode(&out)
    }
}
