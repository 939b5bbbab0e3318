//! Programs kept in the shared region, so that any process mapping it can load and JIT them:
//! the relocated bytecode (maps referred to by object id: `lddw` with `src = 1` for a map,
//! `src = 2` for a map value plus offset), the section name and the license.

use bpftime_shm::{ObjectKind, ShmRegion};
use bpftime_vm::insn::{parse_bytecode, to_bytecode, RawInsn};
use std::sync::atomic::Ordering;

const PROG_MAGIC: u64 = 0x6270_665f_7072_6f67; // "bpf_prog"
const TEXT_LEN: usize = 128;

#[repr(C)]
struct ProgDesc {
    magic: u64,
    ninsns: u64,
    insns: u64,
    section: [u8; TEXT_LEN],
    license: [u8; 32],
}

/// A program as stored in the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProgram {
    /// Object id.
    pub id: u32,
    /// Function name.
    pub name: String,
    /// Section name (program type and attach point, libbpf spelling).
    pub section: String,
    /// License.
    pub license: String,
    /// Bytecode, maps referred to by id.
    pub insns: Vec<RawInsn>,
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).to_string()
}

fn fill(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Stores a program; returns its object id.
pub fn store(region: &ShmRegion, name: &str, section: &str, license: &str, insns: &[RawInsn]) -> Result<u32, bpftime_shm::ShmError> {
    let code = to_bytecode(insns);
    let code_off = region.alloc(code.len() as u64)?;
    region.write(code_off, &code);
    let desc_off = region.alloc(std::mem::size_of::<ProgDesc>() as u64)?;
    let mut desc = ProgDesc { magic: PROG_MAGIC, ninsns: insns.len() as u64, insns: code_off, section: [0; TEXT_LEN], license: [0; 32] };
    fill(&mut desc.section, section);
    fill(&mut desc.license, license);
    // SAFETY: ProgDesc is plain integers and byte arrays; viewing it as bytes is sound.
    let bytes = unsafe { std::slice::from_raw_parts(&desc as *const ProgDesc as *const u8, std::mem::size_of::<ProgDesc>()) };
    region.write(desc_off, bytes);
    std::sync::atomic::fence(Ordering::Release);
    region.add_object(ObjectKind::Program, name, desc_off)
}

/// Reads program `id`, checking what it can.
pub fn load(region: &ShmRegion, id: u32) -> Option<StoredProgram> {
    let obj = region.object(id).filter(|o| o.kind == ObjectKind::Program)?;
    let mut raw = vec![0u8; std::mem::size_of::<ProgDesc>()];
    if !region.read(obj.data, &mut raw) {
        return None;
    }
    // SAFETY: `raw` holds size_of::<ProgDesc>() bytes and ProgDesc accepts any bit pattern.
    let desc: ProgDesc = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const ProgDesc) };
    if desc.magic != PROG_MAGIC || desc.ninsns == 0 || desc.ninsns > 1_000_000 {
        return None;
    }
    let mut code = vec![0u8; desc.ninsns as usize * 8];
    if !region.read(desc.insns, &mut code) {
        return None;
    }
    Some(StoredProgram {
        id,
        name: obj.name,
        section: text(&desc.section),
        license: text(&desc.license),
        insns: parse_bytecode(&code).ok()?,
    })
}

/// Every program in the region.
pub fn list(region: &ShmRegion) -> Vec<StoredProgram> {
    region.objects().into_iter().filter(|o| o.kind == ObjectKind::Program).filter_map(|o| load(region, o.id)).collect()
}
