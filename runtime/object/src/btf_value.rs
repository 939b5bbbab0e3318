//! Values printed through their BTF type, as `bpftool map dump` and `bpftime run` show ring
//! buffer records: `{ pid: 42, comm: "bash", ret: -2 }`.

use crate::btf::{Btf, Kind};

/// Most array elements shown before `...`.
const MAX_ELEMS: usize = 32;
/// Deepest nesting followed.
const MAX_DEPTH: usize = 8;

impl Btf {
    /// `bytes` as a value of type `id`: structs as `{ field: value, ... }`, char arrays as
    /// strings, ints with their signedness, enums by name, pointers in hex. Bytes the type does
    /// not cover are ignored; a value cut short shows `?`.
    pub fn format_value(&self, id: u32, bytes: &[u8]) -> String {
        let mut out = String::new();
        self.format_into(&mut out, id, bytes, 0);
        out
    }

    /// The struct this object most likely sends as records of `len` bytes through a ring buffer
    /// or perf buffer: the only named struct of that size (or of that size rounded up to 8,
    /// perf records being padded), preferring one whose name says `event` when several match.
    pub fn record_type(&self, len: usize) -> Option<u32> {
        let fits = |size: usize| size == len || (size < len && size.div_ceil(8) * 8 >= len);
        let candidates: Vec<(u32, &str)> = self
            .types()
            .filter(|(_, t)| t.kind == Kind::Struct && !t.name.is_empty() && fits(t.size_or_type as usize))
            .map(|(id, t)| (id, t.name.as_str()))
            .collect();
        match candidates.as_slice() {
            [(id, _)] => Some(*id),
            many => {
                let named: Vec<u32> = many.iter().filter(|(_, n)| n.contains("event")).map(|(id, _)| *id).collect();
                (named.len() == 1).then(|| named[0])
            }
        }
    }

    fn format_into(&self, out: &mut String, id: u32, bytes: &[u8], depth: usize) {
        use std::fmt::Write;
        let Ok(id) = self.skip_mods(id) else { return out.push('?') };
        let Ok(t) = self.get(id) else { return out.push('?') };
        if depth > MAX_DEPTH {
            return out.push_str("...");
        }
        let size = self.size_of(id).unwrap_or(0) as usize;
        let Some(b) = bytes.get(..size) else { return out.push('?') };
        match t.kind {
            Kind::Int | Kind::Enum | Kind::Enum64 => {
                let raw = le_uint(b);
                let signed = t.is_signed();
                let v = if signed { sign_extend(raw, size) as u64 } else { raw };
                if let Some((name, _)) = t.values.iter().find(|(_, val)| *val == v || (signed && *val == raw)) {
                    out.push_str(name);
                } else if t.kind == Kind::Int && t.name == "_Bool" {
                    out.push_str(if raw != 0 { "true" } else { "false" });
                } else if signed {
                    let _ = write!(out, "{}", v as i64);
                } else {
                    let _ = write!(out, "{v}");
                }
            }
            Kind::Ptr => {
                let _ = write!(out, "{:#x}", le_uint(b));
            }
            Kind::Float => {
                let _ = match size {
                    4 => write!(out, "{}", f32::from_le_bytes(b.try_into().unwrap_or_default())),
                    8 => write!(out, "{}", f64::from_le_bytes(b.try_into().unwrap_or_default())),
                    _ => write!(out, "{}", hex(b)),
                };
            }
            Kind::Array => {
                let Some((elem, n)) = t.array else { return out.push('?') };
                let esize = self.size_of(elem).unwrap_or(0) as usize;
                let is_char =
                    self.skip_mods(elem).ok().and_then(|e| self.get(e).ok()).is_some_and(|e| e.kind == Kind::Int && esize == 1 && e.name.contains("char"));
                if is_char {
                    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                    let _ = write!(out, "{:?}", String::from_utf8_lossy(&b[..end]));
                    return;
                }
                out.push('[');
                for i in 0..(n as usize).min(MAX_ELEMS) {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    self.format_into(out, elem, b.get(i * esize..).unwrap_or_default(), depth + 1);
                }
                if n as usize > MAX_ELEMS {
                    out.push_str(", ...");
                }
                out.push(']');
            }
            Kind::Struct | Kind::Union => {
                out.push_str("{ ");
                for (i, m) in t.members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    if !m.name.is_empty() {
                        let _ = write!(out, "{}: ", m.name);
                    }
                    let (bit_off, bits) = (t.member_bit_offset(m), t.member_bitfield_size(m));
                    if bits != 0 {
                        let v = bitfield(b, bit_off as usize, bits as usize);
                        let signed = self.skip_mods(m.type_id).ok().and_then(|x| self.get(x).ok()).is_some_and(|x| x.is_signed());
                        let _ = if signed { write!(out, "{}", sign_extend_bits(v, bits as usize)) } else { write!(out, "{v}") };
                    } else if bit_off % 8 == 0 {
                        self.format_into(out, m.type_id, b.get(bit_off as usize / 8..).unwrap_or_default(), depth + 1);
                    } else {
                        out.push('?');
                    }
                }
                out.push_str(" }");
            }
            _ => out.push_str(&hex(b)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

fn le_uint(b: &[u8]) -> u64 {
    b.iter().take(8).rev().fold(0, |acc, &x| acc << 8 | x as u64)
}

fn sign_extend(v: u64, size: usize) -> i64 {
    if size == 0 || size >= 8 {
        return v as i64;
    }
    let shift = 64 - 8 * size;
    ((v << shift) as i64) >> shift
}

fn sign_extend_bits(v: u64, bits: usize) -> i64 {
    if bits == 0 || bits >= 64 {
        return v as i64;
    }
    ((v << (64 - bits)) as i64) >> (64 - bits)
}

/// `bits` bits starting at bit `off` (little-endian bit order, as on x86-64).
fn bitfield(b: &[u8], off: usize, bits: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..bits.min(64) {
        let bit = off + i;
        if b.get(bit / 8).is_some_and(|byte| byte >> (bit % 8) & 1 == 1) {
            v |= 1 << i;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(sign_extend(0xfe, 1), -2);
        assert_eq!(bitfield(&[0b1011_0000], 4, 3), 0b011);
        assert_eq!(sign_extend_bits(0b111, 3), -1);
        assert_eq!(le_uint(&[1, 2]), 0x201);
    }
}
