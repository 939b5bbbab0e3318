//! CO-RE ("compile once, run everywhere") relocations: the field offsets, sizes, existence,
//! signedness and bitfield shifts, type ids, existence and sizes, and enumerator values that
//! clang records in `.BTF.ext`, resolved against a target BTF (the kernel's
//! `/sys/kernel/btf/vmlinux`) as libbpf resolves them: types match by kind and essential name
//! (the name without a `___flavor` suffix), fields by name (through anonymous structs and
//! unions), enumerators by essential name.
//!
//! What finds no match is not an error, as with libbpf: existence checks give 0, type ids and
//! sizes 0, and an instruction that needs the missing offset or value is replaced by a call of
//! helper `0xbad2310` ("poisoned"), which the verifier accepts only where it proves no run
//! reaches it (code behind `if (bpf_core_field_exists(...))`). A load or store whose field
//! changed size is resized where that keeps the value (unsigned integers, pointers) and
//! poisoned otherwise.

use crate::btf::{Btf, BtfError, Kind, Type};
use bpftime_vm::insn::RawInsn;

/// The helper id libbpf writes into an instruction whose relocation found no match ("bad
/// relo"); reaching it is a verifier error.
pub const POISON_HELPER: i32 = 0xbad2310;

/// CO-RE relocation kinds (`enum bpf_core_relo_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreKind {
    /// Byte offset of a field (or of the load unit holding a bitfield).
    FieldByteOffset,
    /// Byte size of a field (or of the load unit holding a bitfield).
    FieldByteSize,
    /// Whether a field exists.
    FieldExists,
    /// Whether a field is a signed integer or enum.
    FieldSigned,
    /// Left shift that puts a bitfield's top bit at bit 63 of its loaded unit.
    FieldLshiftU64,
    /// Right shift that brings the bitfield down after that.
    FieldRshiftU64,
    /// A type's id in the program's own BTF.
    TypeIdLocal,
    /// A type's id in the target BTF.
    TypeIdTarget,
    /// Whether a compatible type exists.
    TypeExists,
    /// A type's size.
    TypeSize,
    /// Whether an enumerator exists.
    EnumvalExists,
    /// An enumerator's value.
    EnumvalValue,
    /// Whether a type with the same shape (members, sizes, signedness) exists.
    TypeMatches,
    /// Any other kind: refused with a clear error.
    Other(u32),
}

impl CoreKind {
    pub(crate) fn from_u32(k: u32) -> CoreKind {
        use CoreKind::*;
        match k {
            0 => FieldByteOffset,
            1 => FieldByteSize,
            2 => FieldExists,
            3 => FieldSigned,
            4 => FieldLshiftU64,
            5 => FieldRshiftU64,
            6 => TypeIdLocal,
            7 => TypeIdTarget,
            8 => TypeExists,
            9 => TypeSize,
            10 => EnumvalExists,
            11 => EnumvalValue,
            12 => TypeMatches,
            k => Other(k),
        }
    }

    fn is_field(self) -> bool {
        use CoreKind::*;
        matches!(self, FieldByteOffset | FieldByteSize | FieldExists | FieldSigned | FieldLshiftU64 | FieldRshiftU64)
    }

    fn is_type(self) -> bool {
        use CoreKind::*;
        matches!(self, TypeIdLocal | TypeIdTarget | TypeExists | TypeSize | TypeMatches)
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

/// One step of an access path: a named member of a struct or union (`type_id` is the
/// composite, `idx` the member), or an array index (`name` is None; `type_id` is the
/// element type; the first step indexes the root type itself).
#[derive(Clone, Debug)]
struct Accessor {
    type_id: u32,
    idx: u32,
    name: Option<String>,
}

/// A relocation's access path in one BTF: the named members and array indexes it passes
/// (anonymous structs and unions on the way are not steps) and the bit offset it reaches.
#[derive(Clone, Debug)]
struct Spec<'b> {
    btf: &'b Btf,
    steps: Vec<Accessor>,
    bit_offset: u64,
}

fn is_composite(t: &Type) -> bool {
    matches!(t.kind, Kind::Struct | Kind::Union)
}

fn is_enum(t: &Type) -> bool {
    matches!(t.kind, Kind::Enum | Kind::Enum64)
}

/// Kinds CO-RE treats as the same: equal, or both enums (32 or 64 bit).
fn kinds_compatible(a: &Type, b: &Type) -> bool {
    a.kind == b.kind || (is_enum(a) && is_enum(b))
}

/// Bit offset of member `i` of composite `t`.
fn member_bit_offset(t: &Type, i: usize) -> u64 {
    t.member_bit_offset(&t.members[i]) as u64
}

/// Bitfield size of member `i` of composite `t` (0: not a bitfield).
fn member_bitfield_size(t: &Type, i: usize) -> u32 {
    t.member_bitfield_size(&t.members[i])
}

/// Whether array step `arr` (with `nelems` elements) after `prev` is a flexible array: the
/// last member of its struct, declared with no elements.
fn is_flexible(btf: &Btf, prev: Option<&Accessor>, nelems: u32) -> bool {
    let Some(Accessor { type_id, idx, name: Some(_) }) = prev else { return false };
    nelems == 0 && btf.get(*type_id).is_ok_and(|t| *idx as usize + 1 == t.members.len())
}

/// Parses a local access path.
fn local_spec<'b>(btf: &'b Btf, r: &CoreReloc) -> Result<Spec<'b>, String> {
    let raw: Vec<u32> = r.access.split(':').map(|s| s.parse::<u32>().map_err(|_| format!("bad access string `{}`", r.access))).collect::<Result<_, _>>()?;
    let mut spec = Spec { btf, steps: vec![], bit_offset: 0 };
    let e = |e: BtfError| e.to_string();
    if r.kind.is_type() {
        if raw != [0] {
            return Err(format!("type relocation with access string `{}`", r.access));
        }
        return Ok(spec);
    }
    if !r.kind.is_field() {
        let t = btf.get(btf.skip_mods(r.type_id).map_err(e)?).map_err(e)?;
        let Some((name, _)) = (is_enum(t) && raw.len() == 1).then(|| t.values.get(raw[0] as usize)).flatten() else {
            return Err(format!("enumerator relocation with access string `{}`", r.access));
        };
        spec.steps.push(Accessor { type_id: r.type_id, idx: raw[0], name: Some(name.clone()) });
        return Ok(spec);
    }
    let mut id = btf.skip_mods(r.type_id).map_err(e)?;
    spec.steps.push(Accessor { type_id: id, idx: raw[0], name: None });
    spec.bit_offset = raw[0] as u64 * btf.size_of(id).map_err(e)? as u64 * 8;
    for &idx in &raw[1..] {
        id = btf.skip_mods(id).map_err(e)?;
        let t = btf.get(id).map_err(e)?;
        if is_composite(t) {
            let m = t.members.get(idx as usize).ok_or_else(|| format!("member {idx} of type {id} does not exist"))?;
            spec.bit_offset += member_bit_offset(t, idx as usize);
            if !m.name.is_empty() {
                spec.steps.push(Accessor { type_id: id, idx, name: Some(m.name.clone()) });
            }
            id = m.type_id;
        } else if let (Kind::Array, Some((elem, n))) = (t.kind, t.array) {
            if idx >= n && !is_flexible(btf, spec.steps.last(), n) {
                return Err(format!("index {idx} is past the end of an array of {n}"));
            }
            id = btf.skip_mods(elem).map_err(e)?;
            spec.steps.push(Accessor { type_id: id, idx, name: None });
            spec.bit_offset += idx as u64 * btf.size_of(id).map_err(e)? as u64 * 8;
        } else {
            return Err(format!("access path `{}` goes through type {id}, which is neither a struct, a union nor an array", r.access));
        }
    }
    Ok(spec)
}

/// Types of the target whose kind and essential name are those of local type `root`.
fn candidates(local: &Btf, root: u32, target: &Btf) -> Result<Vec<u32>, String> {
    let t = local.get(root).map_err(|e| e.to_string())?;
    let name = essential(&t.name);
    if name.is_empty() {
        return Err("relocations against anonymous types are not supported".into());
    }
    let kinds: &[Kind] = if is_enum(t) { &[Kind::Enum, Kind::Enum64] } else { std::slice::from_ref(&t.kind) };
    Ok(kinds.iter().flat_map(|&k| target.find(k, name).iter().copied()).collect())
}

/// Whether two names agree without their flavors (an anonymous one agrees with any).
fn flavorless_names_agree(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || essential(a) == essential(b)
}

/// Whether a local field's type can be read as the target field's (libbpf's
/// `bpf_core_fields_are_compat`).
fn fields_compatible(local: &Btf, lid: u32, target: &Btf, tid: u32, depth: u32) -> Result<bool, BtfError> {
    let (lt, tt) = (local.get(local.skip_mods(lid)?)?, target.get(target.skip_mods(tid)?)?);
    if is_composite(lt) && is_composite(tt) {
        return Ok(true);
    }
    if !kinds_compatible(lt, tt) || depth == 0 {
        return Ok(false);
    }
    Ok(match lt.kind {
        Kind::Ptr | Kind::Float => true,
        Kind::Fwd | Kind::Enum | Kind::Enum64 => flavorless_names_agree(&lt.name, &tt.name),
        Kind::Int => lt.int_bit_offset == 0 && tt.int_bit_offset == 0,
        Kind::Array => fields_compatible(local, lt.array.expect("array").0, target, tt.array.expect("array").0, depth - 1)?,
        _ => false,
    })
}

/// Whether target type `tid` is compatible with local type `lid` (libbpf's
/// `bpf_core_types_are_compat`): same kinds along pointers, arrays and function prototypes.
fn types_compatible(local: &Btf, lid: u32, target: &Btf, tid: u32, depth: u32) -> Result<bool, BtfError> {
    if !kinds_compatible(local.get(lid)?, target.get(tid)?) || depth == 0 {
        return Ok(false);
    }
    let (lt, tt) = (local.get(local.skip_mods(lid)?)?, target.get(target.skip_mods(tid)?)?);
    if !kinds_compatible(lt, tt) {
        return Ok(false);
    }
    Ok(match lt.kind {
        Kind::Void | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Fwd => true,
        Kind::Int => lt.int_bit_offset == 0 && tt.int_bit_offset == 0,
        Kind::Ptr => types_compatible(local, lt.size_or_type, target, tt.size_or_type, depth - 1)?,
        Kind::Array => types_compatible(local, lt.array.expect("array").0, target, tt.array.expect("array").0, depth - 1)?,
        Kind::FuncProto => {
            lt.members.len() == tt.members.len()
                && lt
                    .members
                    .iter()
                    .zip(&tt.members)
                    .try_fold(true, |ok, (a, b)| Ok::<_, BtfError>(ok && types_compatible(local, a.type_id, target, b.type_id, depth - 1)?))?
                && types_compatible(local, lt.size_or_type, target, tt.size_or_type, depth - 1)?
        }
        _ => false,
    })
}

/// Whether target type `tid` has the shape of local type `lid` (libbpf's
/// `bpf_core_types_match`): every local member and enumerator present by name with a
/// matching type, integers of equal size and signedness, arrays of equal length; behind a
/// pointer, structs and unions only need their names to agree.
fn types_match(local: &Btf, lid: u32, target: &Btf, tid: u32, behind_ptr: bool, depth: u32) -> Result<bool, BtfError> {
    let (lt, tt) = (local.get(local.skip_mods(lid)?)?, target.get(target.skip_mods(tid)?)?);
    let names_agree = if tt.name.is_empty() { lt.name.is_empty() } else { essential(&lt.name) == essential(&tt.name) };
    if !names_agree || depth == 0 {
        return Ok(false);
    }
    Ok(match lt.kind {
        Kind::Void => tt.kind == Kind::Void,
        Kind::Fwd => (is_composite(tt) && (tt.kind == Kind::Union) == lt.kind_flag) || (tt.kind == Kind::Fwd && tt.kind_flag == lt.kind_flag),
        Kind::Enum | Kind::Enum64 => is_enum(tt) && lt.values.iter().all(|(n, _)| tt.values.iter().any(|(m, _)| essential(n) == essential(m))),
        Kind::Struct | Kind::Union if behind_ptr => lt.kind == tt.kind || (tt.kind == Kind::Fwd && (lt.kind == Kind::Union) == tt.kind_flag),
        Kind::Struct | Kind::Union => {
            lt.kind == tt.kind
                && lt.members.len() <= tt.members.len()
                && lt.members.iter().try_fold(true, |ok, lm| {
                    if !ok {
                        return Ok(false);
                    }
                    match tt.members.iter().find(|tm| essential(&tm.name) == essential(&lm.name)) {
                        Some(tm) => types_match(local, lm.type_id, target, tm.type_id, behind_ptr, depth - 1),
                        None => Ok(false),
                    }
                })?
        }
        Kind::Int => tt.kind == Kind::Int && lt.size_or_type == tt.size_or_type && lt.int_signed == tt.int_signed,
        Kind::Ptr => tt.kind == Kind::Ptr && types_match(local, lt.size_or_type, target, tt.size_or_type, true, depth - 1)?,
        Kind::Array => match (lt.array, tt.array) {
            (Some((le, ln)), Some((te, tn))) if tt.kind == Kind::Array && ln == tn => types_match(local, le, target, te, behind_ptr, depth - 1)?,
            _ => false,
        },
        Kind::FuncProto => {
            tt.kind == Kind::FuncProto
                && lt.members.len() == tt.members.len()
                && lt
                    .members
                    .iter()
                    .zip(&tt.members)
                    .try_fold(true, |ok, (a, b)| Ok::<_, BtfError>(ok && types_match(local, a.type_id, target, b.type_id, behind_ptr, depth - 1)?))?
                && types_match(local, lt.size_or_type, target, tt.size_or_type, behind_ptr, depth - 1)?
        }
        _ => false,
    })
}

/// Finds the target member matching local step `step` in composite `tid`, looking through
/// anonymous members; on success pushes the step (and the offsets) onto `spec` and returns
/// the member's type.
fn match_member(local: &Btf, step: &Accessor, target: &Btf, tid: u32, spec: &mut Spec, depth: u32) -> Result<Option<u32>, BtfError> {
    let tid = target.skip_mods(tid)?;
    let tt = target.get(tid)?;
    if !is_composite(tt) || depth == 0 {
        return Ok(None);
    }
    let lm = &local.get(step.type_id)?.members[step.idx as usize];
    for (i, m) in tt.members.iter().enumerate() {
        let bits = member_bit_offset(tt, i);
        spec.bit_offset += bits;
        if m.name.is_empty() {
            if let Some(found) = match_member(local, step, target, m.type_id, spec, depth - 1)? {
                return Ok(Some(found));
            }
        } else if m.name == lm.name {
            if !fields_compatible(local, lm.type_id, target, m.type_id, 32)? {
                return Ok(None);
            }
            spec.steps.push(Accessor { type_id: tid, idx: i as u32, name: Some(m.name.clone()) });
            return Ok(Some(m.type_id));
        }
        spec.bit_offset -= bits;
    }
    Ok(None)
}

/// The target spec of a field relocation with candidate root `cand`, if its path exists there.
fn match_field<'b>(local: &Spec, target: &'b Btf, cand: u32) -> Result<Option<Spec<'b>>, BtfError> {
    let mut spec = Spec { btf: target, steps: vec![], bit_offset: 0 };
    let mut id = cand;
    for (i, step) in local.steps.iter().enumerate() {
        id = target.skip_mods(id)?;
        if step.name.is_some() {
            match match_member(local.btf, step, target, id, &mut spec, 32)? {
                Some(next) => id = next,
                None => return Ok(None),
            }
            continue;
        }
        if i > 0 {
            let t = target.get(id)?;
            let Some((elem, n)) = t.array.filter(|_| t.kind == Kind::Array) else { return Ok(None) };
            if step.idx >= n && !is_flexible(target, spec.steps.last(), n) {
                return Ok(None);
            }
            id = target.skip_mods(elem)?;
        }
        spec.steps.push(Accessor { type_id: id, idx: step.idx, name: None });
        spec.bit_offset += step.idx as u64 * target.size_of(id)? as u64 * 8;
    }
    Ok(Some(spec))
}

/// A field relocation's value in one BTF, and for a plain (non-bitfield) byte offset the
/// field's size and type, for resizing loads and stores.
struct FieldValue {
    value: u64,
    size: u32,
    type_id: u32,
}

fn field_value(kind: CoreKind, spec: &Spec) -> Result<FieldValue, String> {
    let e = |e: BtfError| e.to_string();
    let btf = spec.btf;
    let last = spec.steps.last().expect("a field spec has a step");
    let Some(_) = &last.name else {
        // The path ends in an array element (or the root itself).
        let size = btf.size_of(last.type_id).map_err(e)?;
        return match kind {
            CoreKind::FieldByteOffset => Ok(FieldValue { value: spec.bit_offset / 8, size, type_id: last.type_id }),
            CoreKind::FieldByteSize => Ok(FieldValue { value: size as u64, size: 0, type_id: 0 }),
            _ => Err(format!("{kind:?} of an array element")),
        };
    };
    let t = btf.get(last.type_id).map_err(e)?;
    let field_type = btf.skip_mods(t.members[last.idx as usize].type_id).map_err(e)?;
    let mt = btf.get(field_type).map_err(e)?;
    let bit_off = spec.bit_offset;
    let mut bit_size = member_bitfield_size(t, last.idx as usize) as u64;
    let bitfield = bit_size > 0;
    let (byte_off, byte_size) = if bitfield {
        // The smallest naturally aligned unit, from the field's type's size up, holding it.
        let mut size = (mt.size_or_type as u64).max(1);
        let mut off = bit_off / 8 / size * size;
        while bit_off + bit_size - off * 8 > size * 8 {
            if size >= 8 {
                return Err("the bitfield cannot be read with one 8-byte load".into());
            }
            size *= 2;
            off = bit_off / 8 / size * size;
        }
        (off, size)
    } else {
        let size = btf.size_of(field_type).map_err(e)? as u64;
        bit_size = size * 8;
        (bit_off / 8, size)
    };
    let value = match kind {
        CoreKind::FieldByteOffset if !bitfield => return Ok(FieldValue { value: byte_off, size: byte_size as u32, type_id: field_type }),
        CoreKind::FieldByteOffset => byte_off,
        CoreKind::FieldByteSize => byte_size,
        CoreKind::FieldSigned => mt.is_signed() as u64,
        CoreKind::FieldLshiftU64 => 64 - (bit_off + bit_size - byte_off * 8),
        CoreKind::FieldRshiftU64 => 64 - bit_size,
        _ => unreachable!("field kinds only"),
    };
    Ok(FieldValue { value, size: 0, type_id: 0 })
}

/// What a relocation makes of its instruction.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The value for the instruction; for a field whose size changed, what a load or store
    /// of it becomes: resized (from, to bytes) where that keeps the value, else poisoned.
    Value { value: u64, resize: Option<Result<(u32, u32), String>> },
    /// Replace the instruction with a call of [`POISON_HELPER`], for this reason.
    Poison(String),
}

/// A readable name of what a relocation looks for, for messages.
fn describe(local: &Btf, r: &CoreReloc, spec: &Spec) -> String {
    let root = local.get(r.type_id).map(|t| t.name.clone()).unwrap_or_default();
    let path: Vec<String> = spec.steps.iter().filter_map(|s| s.name.clone()).collect();
    match (r.kind.is_field(), r.kind.is_type()) {
        (true, _) => format!("field `{}` of `{root}`", path.join(".")),
        (_, true) => format!("type `{root}`"),
        _ => format!("enumerator `{}` of `{root}`", path.join("")),
    }
}

/// Resolves relocation `r` of the program.
fn resolve(r: &CoreReloc, local: &Btf, target: &Btf) -> Result<Outcome, String> {
    if let CoreKind::Other(k) = r.kind {
        return Err(format!("relocation kind {k} is not supported"));
    }
    let lspec = local_spec(local, r)?;
    if r.kind == CoreKind::TypeIdLocal {
        return Ok(Outcome::Value { value: r.type_id as u64, resize: None });
    }
    let e = |e: BtfError| e.to_string();
    // (value, bit offset, target size and type) per matching candidate.
    let mut found: Vec<(Outcome, u64, Option<FieldValue>)> = vec![];
    for cand in candidates(local, r.type_id, target)? {
        let (outcome, bits, field) = if r.kind.is_field() {
            let Some(tspec) = match_field(&lspec, target, cand).map_err(e)? else { continue };
            if r.kind == CoreKind::FieldExists {
                (Outcome::Value { value: 1, resize: None }, tspec.bit_offset, None)
            } else {
                let v = field_value(r.kind, &tspec)?;
                (Outcome::Value { value: v.value, resize: None }, tspec.bit_offset, Some(v))
            }
        } else if r.kind.is_type() {
            let ok = match r.kind {
                CoreKind::TypeMatches => types_match(local, r.type_id, target, cand, false, 32),
                _ => types_compatible(local, r.type_id, target, cand, 32),
            }
            .map_err(e)?;
            if !ok {
                continue;
            }
            let value = match r.kind {
                CoreKind::TypeIdTarget => cand as u64,
                CoreKind::TypeSize => target.size_of(cand).map_err(e)? as u64,
                _ => 1,
            };
            (Outcome::Value { value, resize: None }, 0, None)
        } else {
            let want = essential(lspec.steps[0].name.as_deref().expect("enumerator name"));
            let t = target.get(target.skip_mods(cand).map_err(e)?).map_err(e)?;
            let Some(&(_, raw)) = t.values.iter().find(|(n, _)| essential(n) == want) else { continue };
            // A 32-bit enumerator's value is sign-extended, as libbpf reads it.
            let v = if t.kind == Kind::Enum { raw as u32 as i32 as i64 as u64 } else { raw };
            let value = if r.kind == CoreKind::EnumvalValue { v } else { 1 };
            (Outcome::Value { value, resize: None }, 0, None)
        };
        if let Some((first, first_bits, _)) = found.first() {
            if r.kind.is_field() && *first_bits != bits {
                return Err(format!("{} is at different offsets in two candidate types", describe(local, r, &lspec)));
            }
            if *first != outcome {
                return Err(format!("{} resolves to different values in two candidate types", describe(local, r, &lspec)));
            }
        }
        found.push((outcome, bits, field));
    }
    let Some((outcome, _, field)) = found.into_iter().next() else {
        // Nothing matches: existence is 0, type ids and sizes 0, anything else is poisoned.
        use CoreKind::*;
        return Ok(match r.kind {
            FieldExists | TypeExists | TypeMatches | EnumvalExists | TypeIdTarget | TypeSize => Outcome::Value { value: 0, resize: None },
            _ => Outcome::Poison(format!("{} not found in the kernel's BTF", describe(local, r, &lspec))),
        });
    };
    // A plain field's offset whose size changed: loads and stores are resized where the value
    // survives (both unsigned integers, or both pointers), and poisoned where it would not.
    if let (Outcome::Value { value, .. }, Some(tv)) = (&outcome, field) {
        if r.kind == CoreKind::FieldByteOffset && tv.size != 0 {
            let lv = field_value(r.kind, &lspec)?;
            if lv.size != tv.size {
                let (lt, tt) = (local.get(lv.type_id).map_err(e)?, target.get(tv.type_id).map_err(e)?);
                let keeps =
                    (lt.kind == Kind::Ptr && tt.kind == Kind::Ptr) || (lt.kind == Kind::Int && tt.kind == Kind::Int && !lt.int_signed && !tt.int_signed);
                let resize = match keeps {
                    true => Ok((lv.size, tv.size)),
                    false => {
                        Err(format!("{} is {} bytes in the kernel, {} here, and cannot be read at another size", describe(local, r, &lspec), tv.size, lv.size))
                    }
                };
                return Ok(Outcome::Value { value: *value, resize: Some(resize) });
            }
        }
    }
    Ok(outcome)
}

/// The value the compiler wrote for relocation `r` (from the local BTF), where it is exact
/// enough to check the instruction against (not for bitfields or type ids).
fn local_value(r: &CoreReloc, local: &Btf) -> Option<u64> {
    let spec = local_spec(local, r).ok()?;
    match r.kind {
        CoreKind::FieldExists | CoreKind::TypeExists | CoreKind::TypeMatches | CoreKind::EnumvalExists => Some(1),
        CoreKind::TypeSize => local.size_of(r.type_id).ok().map(u64::from),
        CoreKind::EnumvalValue => {
            let t = local.get(local.skip_mods(r.type_id).ok()?).ok()?;
            let raw = t.values.get(spec.steps[0].idx as usize)?.1;
            Some(if t.kind == Kind::Enum { raw as u32 as i32 as i64 as u64 } else { raw })
        }
        CoreKind::FieldByteOffset | CoreKind::FieldByteSize | CoreKind::FieldSigned => {
            let last = spec.steps.last()?;
            let bitfield = last.name.is_some() && member_bitfield_size(local.get(last.type_id).ok()?, last.idx as usize) > 0;
            (!bitfield || r.kind == CoreKind::FieldSigned).then(|| field_value(r.kind, &spec).ok().map(|v| v.value)).flatten()
        }
        CoreKind::FieldRshiftU64 => field_value(r.kind, &spec).ok().map(|v| v.value),
        _ => None,
    }
}

/// Rewrites `insn` into a call of [`POISON_HELPER`].
fn poison(insn: &mut RawInsn) {
    *insn = RawInsn::new(0x85, 0, 0, 0, POISON_HELPER);
}

/// Applies one relocation to `insns`. Returns why the instruction was poisoned, if it was.
pub(crate) fn apply(insns: &mut [RawInsn], r: &CoreReloc, local: &Btf, target: &Btf) -> Result<Option<String>, CoreError> {
    let fail = |msg: String| CoreError::Failed { insn: r.insn, msg };
    let outcome = resolve(r, local, target).map_err(fail)?;
    let expected = local_value(r, local);
    let at = r.insn;
    let insn = *insns.get(at).ok_or_else(|| fail("instruction index out of range".into()))?;
    let is_ldimm64 = insn.opc == 0x18;
    let (value, resize) = match outcome {
        Outcome::Poison(why) => {
            if is_ldimm64 && at + 1 < insns.len() {
                poison(&mut insns[at + 1]);
            }
            poison(&mut insns[at]);
            return Ok(Some(why));
        }
        Outcome::Value { value, resize } => (value, resize),
    };
    let mismatch = |got: u64| fail(format!("the instruction holds {got}, not the {} its type information gives", expected.unwrap_or_default()));
    match insn.opc & 0x07 {
        // ALU and ALU64 with an immediate.
        0x04 | 0x07 if insn.opc & 0x08 == 0 => {
            if expected.is_some_and(|v| insn.imm as i64 as u64 != v) {
                return Err(mismatch(insn.imm as i64 as u64));
            }
            insns[at].imm = value as i32;
        }
        // Loads and stores: the offset, and the size where the field's changed.
        0x01..=0x03 => {
            if expected.is_some_and(|v| insn.off as i64 as u64 != v) {
                return Err(mismatch(insn.off as i64 as u64));
            }
            let size_bits = |bytes: u32| match bytes {
                1 => Some(0x10),
                2 => Some(0x08),
                4 => Some(0x00),
                8 => Some(0x18),
                _ => None,
            };
            match resize {
                Some(Err(why)) => {
                    poison(&mut insns[at]);
                    return Ok(Some(why));
                }
                Some(Ok((from, to))) => {
                    if size_bits(from) != Some(insn.opc & 0x18) {
                        return Err(fail(format!("the instruction does not access the field's {from} bytes")));
                    }
                    let bits = size_bits(to).ok_or_else(|| fail(format!("a field of {to} bytes cannot be loaded or stored")))?;
                    insns[at].opc = (insn.opc & !0x18) | bits;
                }
                None => {}
            }
            insns[at].off = i16::try_from(value).map_err(|_| fail(format!("offset {value} does not fit in 16 bits")))?;
        }
        // lddw: the whole 64-bit value.
        0x00 if is_ldimm64 && at + 1 < insns.len() => {
            let old = insn.imm as u32 as u64 | (insns[at + 1].imm as u32 as u64) << 32;
            if expected.is_some_and(|v| old != v) {
                return Err(mismatch(old));
            }
            insns[at].imm = value as u32 as i32;
            insns[at + 1].imm = (value >> 32) as u32 as i32;
        }
        _ => return Err(fail(format!("cannot relocate instruction {:#04x}", insn.opc))),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF with `[1] int` of `int_size` bytes (signed or not) and `[2] struct task_struct {
    /// <int> pid; }`, as clang would describe a program's local view of the kernel's type.
    fn local_task_struct(int_size: u32, signed: bool) -> Btf {
        let strings = b"\0int\0task_struct\0pid\0";
        let mut types = vec![];
        let mut push = |x: u32| types.extend_from_slice(&x.to_le_bytes());
        push(1);
        push(1 << 24);
        push(int_size);
        push(((signed as u32) << 24) | (int_size * 8));
        push(5);
        push(4 << 24 | 1);
        push(int_size);
        push(17);
        push(1);
        push(0);
        let mut b = vec![];
        for x in [0x0001_eb9fu32, 24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strings);
        Btf::parse(&b).expect("valid BTF")
    }

    fn kernel_btf() -> Option<Btf> {
        Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?).ok()
    }

    /// `bpf_core_type_matches` (which clang 14 cannot emit): the kernel's task_struct has a
    /// signed 4-byte `pid`, so a local view with one matches and views with another size or
    /// signedness do not; `bpf_core_type_exists` holds for all three.
    #[test]
    fn type_matches_compares_members_and_existence_does_not() {
        let Some(kernel) = kernel_btf() else {
            println!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        let reloc = |kind| CoreReloc { insn: 0, kind, type_id: 2, access: "0".into() };
        for (size, signed, matches) in [(4, true, true), (4, false, false), (8, true, false)] {
            let local = local_task_struct(size, signed);
            assert_eq!(resolve(&reloc(CoreKind::TypeMatches), &local, &kernel), Ok(Outcome::Value { value: matches as u64, resize: None }), "{size} {signed}");
            assert_eq!(resolve(&reloc(CoreKind::TypeExists), &local, &kernel), Ok(Outcome::Value { value: 1, resize: None }));
        }
        // The field's offset through the same view: a load of the right size stays as it is;
        // one through an 8-byte signed view of the 4-byte field cannot be resized (the sign
        // would be lost) and is poisoned.
        let field = CoreReloc { insn: 0, kind: CoreKind::FieldByteOffset, type_id: 2, access: "0:0".into() };
        let Ok(Outcome::Value { value, resize: None }) = resolve(&field, &local_task_struct(4, true), &kernel) else { panic!("same size, no resize") };
        assert!(value > 0);
        let Ok(Outcome::Value { resize: Some(Err(why)), .. }) = resolve(&field, &local_task_struct(8, true), &kernel) else {
            panic!("a signed field read at another size")
        };
        assert!(why.contains("4 bytes in the kernel, 8 here"), "{why}");
    }
}
