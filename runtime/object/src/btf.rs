//! A reader for BTF, the BPF Type Format: the `.BTF` section of objects and
//! `/sys/kernel/btf/vmlinux`. Enough of it to read BTF-defined maps and to apply CO-RE field
//! relocations.

use std::collections::HashMap;

/// BTF kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_u32(k: u32) -> Option<Kind> {
        use Kind::*;
        Some(match k {
            0 => Void,
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            _ => return None,
        })
    }
}

/// A member of a struct or union, a variable of a datasec, or a parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Name (empty when anonymous).
    pub name: String,
    /// Type id.
    pub type_id: u32,
    /// Bit offset (struct/union), byte offset (datasec), 0 otherwise.
    pub offset: u32,
    /// Byte size (datasec variables only).
    pub size: u32,
}

/// One type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    /// Kind.
    pub kind: Kind,
    /// Name (empty when anonymous).
    pub name: String,
    /// Size in bytes for ints, structs, unions, enums, datasecs; the referenced type id for
    /// pointers, typedefs, modifiers, functions and variables.
    pub size_or_type: u32,
    /// Array: (element type, number of elements).
    pub array: Option<(u32, u32)>,
    /// Struct/union members, datasec variables, function parameters.
    pub members: Vec<Member>,
    /// kind_flag: for structs and unions, member offsets are bitfield-encoded; for enums, the
    /// values are signed.
    pub kind_flag: bool,
    /// Ints: whether the encoding has `BTF_INT_SIGNED`.
    pub int_signed: bool,
    /// Ints: the encoding's bit offset (non-zero only in old bitfield-like ints).
    pub int_bit_offset: u32,
    /// Enums: the enumerators (name, value as raw 64 bits).
    pub values: Vec<(String, u64)>,
}

impl Type {
    /// The bit offset of member `m` of this struct or union (with `kind_flag`, its offset's low
    /// 24 bits).
    pub fn member_bit_offset(&self, m: &Member) -> u32 {
        if self.kind_flag {
            m.offset & 0xff_ffff
        } else {
            m.offset
        }
    }

    /// The bitfield size of member `m` of this struct or union (0: not a bitfield).
    pub fn member_bitfield_size(&self, m: &Member) -> u32 {
        if self.kind_flag {
            m.offset >> 24
        } else {
            0
        }
    }

    /// Whether values of this (int or enum) type are signed.
    pub fn is_signed(&self) -> bool {
        match self.kind {
            Kind::Int => self.int_signed,
            Kind::Enum | Kind::Enum64 => self.kind_flag,
            _ => false,
        }
    }
}

/// Why BTF could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF: {0}")]
    Malformed(String),
    #[error("BTF: type {0} does not exist")]
    NoType(u32),
}

fn bad(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

/// Parsed BTF.
#[derive(Clone, Debug, Default)]
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<(Kind, String), Vec<u32>>,
    strings: Vec<u8>,
}

/// The NUL-terminated string at `off` of a string table.
fn string_at(strings: &[u8], off: u32) -> Result<String, BtfError> {
    let s = strings.get(off as usize..).ok_or_else(|| bad("string offset"))?;
    let end = s.iter().position(|&c| c == 0).ok_or_else(|| bad("unterminated string"))?;
    Ok(String::from_utf8_lossy(&s[..end]).to_string())
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or_else(|| bad("truncated"))
}

impl Btf {
    /// Parses raw BTF (starting with magic 0xeB9F).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(bad("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or_else(|| bad("type section"))?;
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or_else(|| bad("string section"))?;
        let name = |off: u32| string_at(strings, off);
        let mut types = vec![Type {
            kind: Kind::Void,
            name: String::new(),
            size_or_type: 0,
            array: None,
            members: vec![],
            kind_flag: false,
            int_signed: false,
            int_bit_offset: 0,
            values: vec![],
        }];
        let mut p = 0;
        while p < types_bytes.len() {
            let name_off = u32_at(types_bytes, p)?;
            let info = u32_at(types_bytes, p + 4)?;
            let size_or_type = u32_at(types_bytes, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = Kind::from_u32((info >> 24) & 0x1f).ok_or_else(|| bad(format!("unknown kind {}", (info >> 24) & 0x1f)))?;
            let mut t = Type {
                kind,
                name: name(name_off)?,
                size_or_type,
                array: None,
                members: vec![],
                kind_flag: info >> 31 != 0,
                int_signed: false,
                int_bit_offset: 0,
                values: vec![],
            };
            match kind {
                Kind::Int => {
                    // Encoding in bits 24-27 (BTF_INT_SIGNED is its bit 0), bit offset in 16-23.
                    let word = u32_at(types_bytes, p)?;
                    t.int_signed = (word >> 24) & 1 != 0;
                    t.int_bit_offset = (word >> 16) & 0xff;
                    p += 4;
                }
                Kind::Var | Kind::DeclTag => p += 4,
                Kind::Array => {
                    t.array = Some((u32_at(types_bytes, p)?, u32_at(types_bytes, p + 8)?));
                    p += 12;
                }
                Kind::Struct | Kind::Union => {
                    for _ in 0..vlen {
                        t.members.push(Member {
                            name: name(u32_at(types_bytes, p)?)?,
                            type_id: u32_at(types_bytes, p + 4)?,
                            offset: u32_at(types_bytes, p + 8)?,
                            size: 0,
                        });
                        p += 12;
                    }
                }
                Kind::Enum => {
                    for _ in 0..vlen {
                        // Sign-extended when the enum is signed, as the kernel prints them.
                        let v = u32_at(types_bytes, p + 4)?;
                        let v = if t.kind_flag { v as i32 as i64 as u64 } else { v as u64 };
                        t.values.push((name(u32_at(types_bytes, p)?)?, v));
                        p += 8;
                    }
                }
                Kind::Enum64 => {
                    for _ in 0..vlen {
                        let v = u32_at(types_bytes, p + 4)? as u64 | (u32_at(types_bytes, p + 8)? as u64) << 32;
                        t.values.push((name(u32_at(types_bytes, p)?)?, v));
                        p += 12;
                    }
                }
                Kind::FuncProto => {
                    for _ in 0..vlen {
                        t.members.push(Member { name: name(u32_at(types_bytes, p)?)?, type_id: u32_at(types_bytes, p + 4)?, offset: 0, size: 0 });
                        p += 8;
                    }
                }
                Kind::Datasec => {
                    for _ in 0..vlen {
                        t.members.push(Member {
                            name: String::new(),
                            type_id: u32_at(types_bytes, p)?,
                            offset: u32_at(types_bytes, p + 4)?,
                            size: u32_at(types_bytes, p + 8)?,
                        });
                        p += 12;
                    }
                }
                _ => {}
            }
            types.push(t);
        }
        let mut by_name: HashMap<(Kind, String), Vec<u32>> = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            if !t.name.is_empty() {
                by_name.entry((t.kind, t.name.clone())).or_default().push(i as u32);
            }
        }
        Ok(Btf { types, by_name, strings: strings.to_vec() })
    }

    /// The string at offset `off` of the string table (names, CO-RE access strings).
    pub fn string(&self, off: u32) -> Option<String> {
        string_at(&self.strings, off).ok()
    }

    /// Sets the byte offsets of the variables of DATASEC `section` (clang leaves them 0; libbpf
    /// takes them from the ELF symbols, as the caller does with `offset_of`).
    pub fn fix_datasec_offsets(&mut self, section: &str, offset_of: impl Fn(&str) -> Option<u64>) {
        let ids: Vec<u32> = self.find(Kind::Datasec, section).to_vec();
        for id in ids {
            let idx = id as usize;
            let members = self.types.get(idx).map(|t| t.members.clone()).unwrap_or_default();
            let fixed: Vec<Member> = members
                .into_iter()
                .map(|mut m| {
                    let name = self.get(m.type_id).map(|v| v.name.clone()).unwrap_or_default();
                    if let Some(off) = offset_of(&name) {
                        m.offset = off as u32;
                    }
                    m
                })
                .collect();
            if let Some(t) = self.types.get_mut(idx) {
                t.members = fixed;
            }
        }
    }

    /// Every type with its id (id 0 is `void`).
    pub fn types(&self) -> impl Iterator<Item = (u32, &Type)> {
        self.types.iter().enumerate().map(|(i, t)| (i as u32, t))
    }

    /// The type with id `id`.
    pub fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::NoType(id))
    }

    /// Ids of the types of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> &[u32] {
        self.by_name.get(&(kind, name.to_string())).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Follows typedefs and modifiers to the underlying type.
    pub fn skip_mods(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..64 {
            let t = self.get(id)?;
            match t.kind {
                Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(bad("type chain too long"))
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.skip_mods(id)?;
        let t = self.get(id)?;
        Ok(match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float | Kind::Datasec => t.size_or_type,
            Kind::Ptr => 8,
            Kind::Array => {
                let (elem, n) = t.array.expect("arrays have array info");
                self.size_of(elem)?.checked_mul(n).ok_or_else(|| bad("array size overflows"))?
            }
            _ => return Err(bad(format!("type {id} ({:?}) has no size", t.kind))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with: 1 = int (4 bytes, signed), 2 = struct s { int a; int b; }.
    fn sample() -> Vec<u8> {
        sample_with_int_encoding(1 << 24 | 32)
    }

    fn sample_with_int_encoding(encoding: u32) -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = vec![];
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // int
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, encoding);
        // struct s
        push(&mut types, 5);
        push(&mut types, 4 << 24 | 2);
        push(&mut types, 8);
        for (name, off) in [(7u32, 0u32), (9, 32)] {
            push(&mut types, name);
            push(&mut types, 1);
            push(&mut types, off);
        }
        let mut data = vec![0x9f, 0xeb, 1, 0];
        push(&mut data, 24);
        push(&mut data, 0);
        push(&mut data, types.len() as u32);
        push(&mut data, types.len() as u32);
        push(&mut data, strings.len() as u32);
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn parses_types() {
        let btf = Btf::parse(&sample()).unwrap();
        let s = btf.find(Kind::Struct, "s")[0];
        assert_eq!(btf.size_of(s).unwrap(), 8);
        let t = btf.get(s).unwrap();
        assert_eq!(t.members[1].name, "b");
        assert_eq!(t.members[1].offset, 32);
    }

    #[test]
    fn int_signedness_comes_from_the_encoding() {
        let signed = Btf::parse(&sample()).unwrap();
        assert!(signed.get(1).unwrap().is_signed());
        // Named `int` but encoded unsigned: the encoding decides, not the name.
        let unsigned = Btf::parse(&sample_with_int_encoding(32)).unwrap();
        assert!(!unsigned.get(1).unwrap().is_signed());
        assert!(!signed.get(2).unwrap().is_signed(), "a struct is not signed");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Btf::parse(&[0; 10]).is_err());
        let mut d = sample();
        d.truncate(40);
        assert!(Btf::parse(&d).is_err());
    }
}
