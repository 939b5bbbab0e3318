//! Signed intervals of 64-bit values and what eBPF's ALU does to them: the numeric half of
//! the verifier's range analysis ([`crate::analysis`]).
//!
//! Every transfer function is an over-approximation: for any concrete inputs inside the input
//! ranges, [`crate::semantics`] computes a result inside the output range (a property test
//! below checks exactly that). Where a result could wrap around, the range is the full one.

use crate::insn::{AluOp, Width};

/// The values `lo..=hi`, read as signed 64-bit integers. Never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Smallest value.
    pub lo: i64,
    /// Largest value.
    pub hi: i64,
}

const U32_MAX: i64 = u32::MAX as i64;

impl Range {
    /// Every 64-bit value.
    pub const TOP: Range = Range { lo: i64::MIN, hi: i64::MAX };
    /// Every zero-extended 32-bit value.
    pub const U32: Range = Range { lo: 0, hi: U32_MAX };

    /// `lo..=hi`; panics if empty (callers build ranges from ordered bounds).
    pub fn new(lo: i64, hi: i64) -> Range {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        Range { lo, hi }
    }

    /// Exactly `v`.
    pub fn exact(v: i64) -> Range {
        Range { lo: v, hi: v }
    }

    /// `lo..=hi` computed in i128: the full range where it does not fit in i64.
    fn wide(lo: i128, hi: i128) -> Range {
        if lo < i64::MIN as i128 || hi > i64::MAX as i128 {
            Range::TOP
        } else {
            Range { lo: lo as i64, hi: hi as i64 }
        }
    }

    /// The single value, if there is one.
    pub fn singleton(self) -> Option<i64> {
        (self.lo == self.hi).then_some(self.lo)
    }

    /// Whether every value is in `0..=u32::MAX` (so its 32-bit and 64-bit readings agree).
    pub fn is_u32(self) -> bool {
        self.lo >= 0 && self.hi <= U32_MAX
    }

    /// Whether no value is negative (so signed and unsigned readings agree).
    pub fn nonneg(self) -> bool {
        self.lo >= 0
    }

    /// The smallest range holding both.
    pub fn join(self, o: Range) -> Range {
        Range { lo: self.lo.min(o.lo), hi: self.hi.max(o.hi) }
    }

    /// The values in both, or None if there are none.
    pub fn meet(self, o: Range) -> Option<Range> {
        let (lo, hi) = (self.lo.max(o.lo), self.hi.min(o.hi));
        (lo <= hi).then_some(Range { lo, hi })
    }

    /// `new` (which holds `old`) widened against the earlier `old`: a bound that grew jumps to
    /// the nearest of `thresholds` (sorted) beyond it, or to the extreme, so that loops reach a
    /// fixpoint in a few rounds (at most one per threshold) and a loop bounded by a constant the
    /// program compares with keeps that bound.
    pub fn widen(old: Range, new: Range, thresholds: &[i64]) -> Range {
        let lo = if new.lo < old.lo {
            let i = thresholds.partition_point(|&t| t <= new.lo);
            if i > 0 {
                thresholds[i - 1]
            } else {
                i64::MIN
            }
        } else {
            old.lo
        };
        let hi = if new.hi > old.hi { thresholds.get(thresholds.partition_point(|&t| t < new.hi)).copied().unwrap_or(i64::MAX) } else { old.hi };
        Range { lo, hi }
    }

    /// `self + o` (64-bit, wrapping: the full range if it could wrap).
    pub fn plus(self, o: Range) -> Range {
        Range::wide(self.lo as i128 + o.lo as i128, self.hi as i128 + o.hi as i128)
    }

    /// `self - o`.
    pub fn minus(self, o: Range) -> Range {
        Range::wide(self.lo as i128 - o.hi as i128, self.hi as i128 - o.lo as i128)
    }

    /// A 32-bit operand: the range itself when it is a zero-extended 32-bit range, else all
    /// of them (only the low half of a register takes part in a 32-bit operation).
    pub fn low32(self) -> Range {
        if self.is_u32() {
            self
        } else {
            Range::U32
        }
    }

    /// The result of the 64-bit ALU operation `op` on `a` and `b` (`b` is the second operand,
    /// already sign-extended if it was an immediate).
    pub fn alu64(op: AluOp, a: Range, b: Range) -> Range {
        let nonneg = a.nonneg() && b.nonneg();
        let shift = b.singleton().map(|s| (s as u64 & 63) as u32);
        match op {
            AluOp::Mov => b,
            AluOp::Add => a.plus(b),
            AluOp::Sub => a.minus(b),
            AluOp::Mul if nonneg => Range::wide(a.lo as i128 * b.lo as i128, a.hi as i128 * b.hi as i128),
            AluOp::And if a.nonneg() || b.nonneg() => {
                // The result is no larger than any non-negative operand.
                let hi = match (a.nonneg(), b.nonneg()) {
                    (true, true) => a.hi.min(b.hi),
                    (true, false) => a.hi,
                    _ => b.hi,
                };
                Range::new(0, hi)
            }
            AluOp::Or | AluOp::Xor if nonneg => Range::new(0, all_ones_up_to(a.hi.max(b.hi))),
            AluOp::Lsh => match shift {
                Some(0) => a,
                Some(s) if a.nonneg() && a.hi <= i64::MAX >> s => Range::new(a.lo << s, a.hi << s),
                _ => Range::TOP,
            },
            AluOp::Rsh => match shift {
                Some(0) => a,
                Some(s) if a.nonneg() => Range::new(a.lo >> s, a.hi >> s),
                Some(s) => Range::new(0, (u64::MAX >> s) as i64),
                None if a.nonneg() => Range::new(0, a.hi),
                None => Range::TOP,
            },
            // An arithmetic shift by a fixed amount is monotonic.
            AluOp::Arsh => match shift {
                Some(s) => Range::new(a.lo >> s, a.hi >> s),
                None => Range::new(a.lo.min(0), a.hi.max(0)),
            },
            // Unsigned division by a positive divisor: no larger than the dividend; by zero: 0.
            AluOp::Div if nonneg => {
                if b.lo == 0 {
                    Range::new(0, a.hi)
                } else {
                    Range::new(a.lo / b.hi, a.hi / b.lo)
                }
            }
            AluOp::Div if b.lo > 1 => Range::new(0, (u64::MAX / b.lo as u64) as i64),
            // Unsigned modulo: below the divisor, or the dividend itself (divisor 0 or larger).
            AluOp::Mod if nonneg => Range::new(0, if b.lo == 0 { a.hi } else { a.hi.min(b.hi - 1) }),
            AluOp::Mod if b.nonneg() && b.lo > 0 => Range::new(0, b.hi - 1),
            AluOp::MovSx8 => b.meet(Range::new(-128, 127)).filter(|r| *r == b).unwrap_or(Range::new(-128, 127)),
            AluOp::MovSx16 => b.meet(Range::new(-32768, 32767)).filter(|r| *r == b).unwrap_or(Range::new(-32768, 32767)),
            AluOp::MovSx32 => {
                let full = Range::new(i32::MIN as i64, i32::MAX as i64);
                b.meet(full).filter(|r| *r == b).unwrap_or(full)
            }
            _ => Range::TOP,
        }
    }

    /// The result of the 32-bit ALU operation `op` (zero-extended to 64 bits); `b` is the
    /// second operand as the operation sees it (an immediate as `imm as u32`).
    pub fn alu32(op: AluOp, a: Range, b: Range) -> Range {
        let (a, b) = (a.low32(), b.low32());
        let r = match op {
            // On zero-extended inputs these agree with the 64-bit operation wherever its
            // result fits in 32 bits; a shift amount must be below 32 to mean the same.
            AluOp::Mov | AluOp::Add | AluOp::Sub | AluOp::Mul | AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Div | AluOp::Mod => Range::alu64(op, a, b),
            AluOp::Lsh | AluOp::Rsh if b.singleton().is_some_and(|s| s < 32) => Range::alu64(op, a, b),
            _ => Range::U32,
        };
        if r.is_u32() {
            r
        } else {
            Range::U32
        }
    }

    /// The values a load of `bytes` bytes produces, sign-extended when `signed`.
    pub fn loaded(bytes: usize, signed: bool) -> Range {
        match (bytes, signed) {
            (8, _) => Range::TOP,
            (n, false) => Range::new(0, (1i64 << (8 * n)) - 1),
            (n, true) => Range::new(-(1i64 << (8 * n - 1)), (1i64 << (8 * n - 1)) - 1),
        }
    }

    /// The second operand of an operation of `width` given as an immediate.
    pub fn of_imm(width: Width, imm: i32) -> Range {
        match width {
            Width::W64 => Range::exact(imm as i64),
            Width::W32 => Range::exact(imm as u32 as i64),
        }
    }
}

/// The smallest `2^k - 1` that is at least `v` (`v >= 0`).
fn all_ones_up_to(v: i64) -> i64 {
    if v == 0 {
        0
    } else {
        (u64::MAX >> (v as u64).leading_zeros()) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics::{alu32, alu64};
    use proptest::prelude::*;

    const OPS: [AluOp; 17] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::SDiv,
        AluOp::Or,
        AluOp::And,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Mod,
        AluOp::SMod,
        AluOp::Xor,
        AluOp::Mov,
        AluOp::MovSx8,
        AluOp::MovSx16,
        AluOp::MovSx32,
        AluOp::Arsh,
    ];

    /// Interesting bounds: small numbers, powers of two and their neighbours, extremes.
    fn bound() -> impl Strategy<Value = i64> {
        prop_oneof![
            -300i64..300,
            (0u32..64, -1i64..=1).prop_map(|(k, d)| (1i64 << k).wrapping_add(d)),
            (0u32..64, -1i64..=1).prop_map(|(k, d)| (1i64 << k).wrapping_neg().wrapping_add(d)),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>(),
        ]
    }

    fn range() -> impl Strategy<Value = Range> {
        (bound(), bound()).prop_map(|(a, b)| Range::new(a.min(b), a.max(b)))
    }

    /// A value inside `r`, near its ends more often than not.
    fn pick(r: Range, t: u64) -> i64 {
        let span = (r.hi as i128 - r.lo as i128) as u128;
        let off = match t % 4 {
            0 => 0,
            1 => span,
            2 => span.min(t as u128 % 7),
            _ => (t as u128) % (span + 1),
        };
        (r.lo as i128 + off as i128) as i64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Soundness: the concrete result of every ALU operation on values inside the input
        /// ranges lies inside the abstract result.
        #[test]
        fn transfer_functions_contain_every_concrete_result(op in 0usize..OPS.len(), a in range(), b in range(), ta: u64, tb: u64) {
            let op = OPS[op];
            let (x, y) = (pick(a, ta), pick(b, tb));
            let r64 = Range::alu64(op, a, b);
            let got = alu64(op, x as u64, y as u64) as i64;
            prop_assert!(r64.lo <= got && got <= r64.hi, "{op:?} 64: {x} op {y} = {got} outside {r64:?} (from {a:?}, {b:?})");
            let r32 = Range::alu32(op, a, b);
            let got = alu32(op, x as u32, y as u32) as i64;
            prop_assert!(r32.lo <= got && got <= r32.hi, "{op:?} 32: {x} op {y} = {got} outside {r32:?} (from {a:?}, {b:?})");
        }
    }

    #[test]
    fn widening_jumps_grown_bounds_to_thresholds_then_the_extremes() {
        assert_eq!(Range::widen(Range::new(0, 0), Range::new(0, 1), &[]), Range::new(0, i64::MAX));
        assert_eq!(Range::widen(Range::new(0, 5), Range::new(-1, 5), &[]), Range::new(i64::MIN, 5));
        assert_eq!(Range::widen(Range::new(0, 5), Range::new(1, 4), &[]), Range::new(0, 5));
        let t = [-8, 0, 15, 16, 17];
        assert_eq!(Range::widen(Range::new(0, 0), Range::new(0, 1), &t), Range::new(0, 15));
        assert_eq!(Range::widen(Range::new(0, 15), Range::new(0, 16), &t), Range::new(0, 16));
        assert_eq!(Range::widen(Range::new(0, 17), Range::new(0, 18), &t), Range::new(0, i64::MAX));
        assert_eq!(Range::widen(Range::new(0, 5), Range::new(-1, 5), &t), Range::new(-8, 5));
        assert_eq!(Range::widen(Range::new(-8, 5), Range::new(-9, 5), &t), Range::new(i64::MIN, 5));
    }
}
