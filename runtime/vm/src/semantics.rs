//! The arithmetic of eBPF as plain functions: the reference both engines must agree with.
//!
//! Division by zero gives 0; modulo by zero leaves the dividend (RFC 9669 §4.1). Signed
//! overflow (`INT_MIN / -1`) wraps, and `INT_MIN % -1` is 0. Shift amounts are masked to the
//! operand width.

use crate::insn::{AluOp, ByteOrder};

/// A 64-bit ALU operation.
pub fn alu64(op: AluOp, a: u64, b: u64) -> u64 {
    match op {
        AluOp::Add => a.wrapping_add(b),
        AluOp::Sub => a.wrapping_sub(b),
        AluOp::Mul => a.wrapping_mul(b),
        AluOp::Div => a.checked_div(b).unwrap_or(0),
        AluOp::SDiv => {
            if b == 0 {
                0
            } else {
                (a as i64).wrapping_div(b as i64) as u64
            }
        }
        AluOp::Or => a | b,
        AluOp::And => a & b,
        AluOp::Lsh => a << (b & 63),
        AluOp::Rsh => a >> (b & 63),
        AluOp::Mod => a.checked_rem(b).unwrap_or(a),
        AluOp::SMod => {
            if b == 0 {
                a
            } else {
                (a as i64).wrapping_rem(b as i64) as u64
            }
        }
        AluOp::Xor => a ^ b,
        AluOp::Mov => b,
        AluOp::MovSx8 => b as i8 as i64 as u64,
        AluOp::MovSx16 => b as i16 as i64 as u64,
        AluOp::MovSx32 => b as i32 as i64 as u64,
        AluOp::Arsh => ((a as i64) >> (b & 63)) as u64,
    }
}

/// A 32-bit ALU operation; the caller zero-extends the result.
pub fn alu32(op: AluOp, a: u32, b: u32) -> u32 {
    match op {
        AluOp::Add => a.wrapping_add(b),
        AluOp::Sub => a.wrapping_sub(b),
        AluOp::Mul => a.wrapping_mul(b),
        AluOp::Div => a.checked_div(b).unwrap_or(0),
        AluOp::SDiv => {
            if b == 0 {
                0
            } else {
                (a as i32).wrapping_div(b as i32) as u32
            }
        }
        AluOp::Or => a | b,
        AluOp::And => a & b,
        AluOp::Lsh => a << (b & 31),
        AluOp::Rsh => a >> (b & 31),
        AluOp::Mod => a.checked_rem(b).unwrap_or(a),
        AluOp::SMod => {
            if b == 0 {
                a
            } else {
                (a as i32).wrapping_rem(b as i32) as u32
            }
        }
        AluOp::Xor => a ^ b,
        AluOp::Mov => b,
        AluOp::MovSx8 => b as i8 as i32 as u32,
        AluOp::MovSx16 => b as i16 as i32 as u32,
        // Not encodable for 32-bit moves; the decoder rejects it.
        AluOp::MovSx32 => b,
        AluOp::Arsh => ((a as i32) >> (b & 31)) as u32,
    }
}

/// A byte-order conversion of the low `bits` of `v` on a little-endian machine.
pub fn endian(order: ByteOrder, bits: u32, v: u64) -> u64 {
    match (order, bits) {
        (ByteOrder::ToLe, 16) => v as u16 as u64,
        (ByteOrder::ToLe, 32) => v as u32 as u64,
        (ByteOrder::ToLe, _) => v,
        (_, 16) => (v as u16).swap_bytes() as u64,
        (_, 32) => (v as u32).swap_bytes() as u64,
        (_, _) => v.swap_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_division_edge_cases() {
        assert_eq!(alu64(AluOp::Div, 7, 0), 0);
        assert_eq!(alu64(AluOp::Mod, 7, 0), 7);
        assert_eq!(alu32(AluOp::Mod, 7, 0), 7);
        assert_eq!(alu64(AluOp::SDiv, i64::MIN as u64, u64::MAX), i64::MIN as u64);
        assert_eq!(alu64(AluOp::SMod, i64::MIN as u64, u64::MAX), 0);
        assert_eq!(alu64(AluOp::SMod, (-7i64) as u64, 2), (-1i64) as u64);
        assert_eq!(alu32(AluOp::SDiv, i32::MIN as u32, u32::MAX), i32::MIN as u32);
        assert_eq!(alu64(AluOp::Lsh, 1, 65), 2);
        assert_eq!(alu32(AluOp::Arsh, 0x8000_0000, 4), 0xf800_0000);
    }

    #[test]
    fn byte_orders() {
        assert_eq!(endian(ByteOrder::ToBe, 16, 0x1122_3344), 0x4433);
        assert_eq!(endian(ByteOrder::ToLe, 32, 0x1122_3344_5566_7788), 0x5566_7788);
        assert_eq!(endian(ByteOrder::Swap, 64, 0x0102_0304_0506_0708), 0x0807_0605_0403_0201);
    }
}
