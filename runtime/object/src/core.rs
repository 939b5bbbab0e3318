//! CO-RE ("compile once, run everywhere") relocations: field offsets, sizes and existence
//! recorded by clang in `.BTF.ext`, resolved against a target BTF (the kernel's
//! `/sys/kernel/btf/vmlinux`) by matching type and member names, as libbpf does.

use crate::btf::{Btf, BtfError, Kind};
use bpftime_vm::insn::RawInsn;

/// CO-RE relocation kinds (`enum bpf_core_relo_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreKind {
    FieldByteOffset,
    FieldByteSize,
    FieldExists,
    FieldSigned,
    /// Any other kind (bitfield shifts, type ids, enum values): refused with a clear error.
    Other(u32),
}

impl CoreKind {
    pub(crate) fn from_u32(k: u32) -> CoreKind {
        match k {
            0 => CoreKind::FieldByteOffset,
            1 => CoreKind::FieldByteSize,
            2 => CoreKind::FieldExists,
            3 => CoreKind::FieldSigned,
            k => CoreKind::Other(k),
        }
    }
}

/// One CO-RE relocation of a linked program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreReloc {
    /// Instruction index in the linked program.
    pub insn: usize,
    /// What to compute.
    pub kind: CoreKind,
    /// Root type in the object's BTF.
    pub type_id: u32,
    /// Access string, e.g. `0:14` (index into the root, then member indices).
    pub access: String,
}

/// Why a CO-RE relocation could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("CO-RE relocation at insn {insn}: {msg}")]
    Failed { insn: usize, msg: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// Name without a `___flavor` suffix (libbpf's "essential name").
fn essential(name: &str) -> &str {
    match name.find("___") {
        Some(p) => &name[..p],
        None => name,
    }
}

/// A resolved field: byte offset, byte size, signedness.
struct Field {
    offset: u64,
    size: u32,
    signed: bool,
}

/// Walks `access` through `btf` from `root`; with `names` it follows members by name (target
/// side), else by index (local side), and records the names it passed.
fn walk(btf: &Btf, root: u32, access: &[u32], names: Option<&[String]>, out_names: &mut Vec<String>) -> Result<Option<Field>, BtfError> {
    let mut ty = btf.skip_mods(root)?;
    let mut offset = access[0] as u64 * btf.size_of(ty)? as u64;
    for (step, &idx) in access[1..].iter().enumerate() {
        let t = btf.get(ty)?;
        match t.kind {
            Kind::Struct | Kind::Union => {
                let m = match names {
                    None => t.members.get(idx as usize).ok_or(BtfError::NoType(idx))?,
                    Some(n) => match t.members.iter().find(|m| m.name == n[step]) {
                        Some(m) => m,
                        None => return Ok(None),
                    },
                };
                out_names.push(m.name.clone());
                let bits = if t.kind_flag { m.offset & 0xff_ffff } else { m.offset };
                offset += bits as u64 / 8;
                ty = btf.skip_mods(m.type_id)?;
            }
            Kind::Array => {
                let (elem, _) = t.array.expect("array info");
                out_names.push(String::new());
                offset += idx as u64 * btf.size_of(elem)? as u64;
                ty = btf.skip_mods(elem)?;
            }
            _ => return Ok(None),
        }
    }
    let signed = btf.get(ty)?.is_signed();
    Ok(Some(Field { offset, size: btf.size_of(ty).unwrap_or(0), signed }))
}

/// Applies one relocation to `insns`.
pub(crate) fn apply(insns: &mut [RawInsn], r: &CoreReloc, local: &Btf, target: &Btf) -> Result<(), CoreError> {
    let fail = |msg: String| CoreError::Failed { insn: r.insn, msg };
    if let CoreKind::Other(k) = r.kind {
        return Err(fail(format!("relocation kind {k} is not supported (only field offset/size/existence)")));
    }
    let access: Vec<u32> =
        r.access.split(':').map(|s| s.parse::<u32>().map_err(|_| fail(format!("bad access string `{}`", r.access)))).collect::<Result<_, _>>()?;
    let root = local.skip_mods(r.type_id)?;
    let root_t = local.get(root)?;
    let mut names = Vec::new();
    walk(local, root, &access, None, &mut names)?.ok_or_else(|| fail("local access path is invalid".into()))?;
    let candidates = target.find(root_t.kind, essential(&root_t.name));
    let mut found = None;
    for &cand in candidates {
        let mut n = Vec::new();
        if let Some(f) = walk(target, cand, &access, Some(&names), &mut n)? {
            found = Some(f);
            break;
        }
    }
    let insn = insns.get_mut(r.insn).ok_or_else(|| fail("instruction index out of range".into()))?;
    let value: i64 = match (r.kind, &found) {
        (CoreKind::FieldExists, f) => f.is_some() as i64,
        (_, None) => return Err(fail(format!("`{}` field `{}` not found in the target BTF", root_t.name, names.join(".")))),
        (CoreKind::FieldByteOffset, Some(f)) => f.offset as i64,
        (CoreKind::FieldByteSize, Some(f)) => f.size as i64,
        (CoreKind::FieldSigned, Some(f)) => f.signed as i64,
        (CoreKind::Other(_), _) => unreachable!(),
    };
    match insn.class() {
        // Loads and stores carry the offset in `off`.
        0x01..=0x03 if r.kind == CoreKind::FieldByteOffset => {
            insn.off = i16::try_from(value).map_err(|_| fail(format!("offset {value} does not fit in 16 bits")))?;
        }
        // ALU and lddw carry it in `imm`.
        _ => insn.imm = i32::try_from(value).map_err(|_| fail(format!("value {value} does not fit in 32 bits")))?,
    }
    Ok(())
}
