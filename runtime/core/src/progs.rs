//! Programs kept in the shared region, so that any process mapping it can load and JIT them:
//! the relocated bytecode (maps referred to by object id: `lddw` with `src = 1` for a map,
//! `src = 2` for a map value plus offset), the section name and the license.

use crate::desc::{self, Plain};
use bpftime_shm::{ObjectKind, ShmRegion};
use bpftime_vm::insn::{parse_bytecode, to_bytecode, RawInsn};

const PROG_MAGIC: u64 = 0x6270_665f_7072_6f67; // "bpf_prog"
const TEXT_LEN: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
struct ProgDesc {
    magic: u64,
    ninsns: u64,
    insns: u64,
    section: [u8; TEXT_LEN],
    license: [u8; 32],
    /// Hits that could not run the program (bpftool's `recursion_misses`), counted atomically
    /// by every process that runs it.
    recursion_misses: u64,
    /// See [`ProgBtf`]: the BTF object, then the func_info and line_info records (offset,
    /// bytes).
    btf: u64,
    func_info: [u64; 2],
    line_info: [u64; 2],
    /// When it was stored (`CLOCK_BOOTTIME` ns, as the kernel's `load_time`), and by whom.
    load_time: u64,
    uid: u64,
    /// The loader process whose fd holds it (0: none, it stays until removed): it goes when
    /// that process and its forked children are gone (see `crate::orphans`).
    owner: u64,
}

pub use bpftime_object::{FUNC_INFO_SIZE, LINE_INFO_SIZE};

/// A program's debug information as a loader gives it (`prog_btf_fd`, `func_info`,
/// `line_info` of `BPF_PROG_LOAD`): what bpftool shows source lines and function names from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgBtf {
    /// The region's BTF object the records name types and strings of (0: none).
    pub object: u32,
    /// `struct bpf_func_info` records, [`FUNC_INFO_SIZE`] bytes each (as the kernel keeps them).
    pub func_info: Vec<u8>,
    /// `struct bpf_line_info` records, [`LINE_INFO_SIZE`] bytes each.
    pub line_info: Vec<u8>,
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
    /// Hits that could not run it: nested deeper than the nesting levels allow, or in a
    /// signal handler that interrupted work it would need (the kernel's `recursion_misses`).
    pub recursion_misses: u64,
    /// Its BTF and debug records, where the loader gave them.
    pub btf: ProgBtf,
    /// When it was stored (`CLOCK_BOOTTIME` ns).
    pub load_time: u64,
    /// The real user id of the process that stored it.
    pub uid: u32,
}

impl StoredProgram {
    /// The maps its `lddw`s name: (instruction index, map id), in program order.
    pub fn map_refs(&self) -> Vec<(usize, u32)> {
        let mut out = vec![];
        let mut pc = 0;
        while pc < self.insns.len() {
            let r = self.insns[pc];
            if r.opc == 0x18 {
                if r.src == 1 || r.src == 2 {
                    out.push((pc, r.imm as u32));
                }
                pc += 1;
            }
            pc += 1;
        }
        out
    }
}

// SAFETY: integers and byte arrays, 8-byte aligned sizes: no padding, any bit pattern valid.
unsafe impl Plain for ProgDesc {}

/// The most bytes of func_info or line_info records kept per program.
const MAX_DEBUG_RECORDS: usize = 16 << 20;

/// Stores a program; returns its object id.
pub fn store(region: &ShmRegion, name: &str, section: &str, license: &str, insns: &[RawInsn]) -> Result<u32, bpftime_shm::ShmError> {
    store_with_btf(region, name, section, license, insns, &ProgBtf::default(), 0)
}

/// Stores a program with its debug information, held by loader process `owner` (0: none);
/// returns its object id.
pub fn store_with_btf(
    region: &ShmRegion,
    name: &str,
    section: &str,
    license: &str,
    insns: &[RawInsn],
    btf: &ProgBtf,
    owner: u32,
) -> Result<u32, bpftime_shm::ShmError> {
    let code = to_bytecode(insns);
    let code_off = region.alloc(code.len() as u64)?;
    region.write(code_off, &code);
    let records = |bytes: &[u8]| -> Result<[u64; 2], bpftime_shm::ShmError> {
        if bytes.is_empty() || bytes.len() > MAX_DEBUG_RECORDS {
            return Ok([0; 2]);
        }
        let off = region.alloc(bytes.len() as u64)?;
        region.write(off, bytes);
        Ok([off, bytes.len() as u64])
    };
    let func_info = records(&btf.func_info)?;
    let line_info = records(&btf.line_info)?;
    let mut desc = ProgDesc {
        magic: PROG_MAGIC,
        ninsns: insns.len() as u64,
        insns: code_off,
        section: [0; TEXT_LEN],
        license: [0; 32],
        recursion_misses: 0,
        btf: btf.object as u64,
        func_info,
        line_info,
        load_time: crate::helpers::clock(libc::CLOCK_BOOTTIME),
        // The real user, as the kernel's `created_by_uid`. SAFETY: getuid(2) cannot fail.
        uid: unsafe { libc::getuid() } as u64,
        owner: owner as u64,
    };
    desc::fill(&mut desc.section, section);
    desc::fill(&mut desc.license, license);
    desc::store(region, ObjectKind::Program, name, &desc)
}

/// Removes program `id` from the region; its bytecode, debug records and descriptor are freed
/// after the region's grace period (an agent may be reading them as it attaches).
pub fn remove(region: &ShmRegion, id: u32) {
    let Some(obj) = region.object(id).filter(|o| o.kind == ObjectKind::Program) else { return };
    let d: Option<ProgDesc> = desc::load(region, obj.data);
    if region.remove_object(id).is_none() {
        return;
    }
    if let Some(d) = d.filter(|d| d.magic == PROG_MAGIC) {
        for off in [d.insns, d.func_info[0], d.line_info[0]] {
            if off != 0 {
                region.retire(off);
            }
        }
    }
    region.retire(obj.data);
}

/// Reads program `id`, checking what it can.
pub fn load(region: &ShmRegion, id: u32) -> Option<StoredProgram> {
    let obj = region.object(id).filter(|o| o.kind == ObjectKind::Program)?;
    let desc: ProgDesc = desc::load(region, obj.data)?;
    if desc.magic != PROG_MAGIC || desc.ninsns == 0 || desc.ninsns > 1_000_000 {
        return None;
    }
    let mut code = vec![0u8; desc.ninsns as usize * 8];
    if !region.read(desc.insns, &mut code) {
        return None;
    }
    let records = |[off, len]: [u64; 2]| -> Vec<u8> {
        let mut bytes = vec![0u8; (len as usize).min(MAX_DEBUG_RECORDS)];
        if region.read(off, &mut bytes) {
            bytes
        } else {
            vec![]
        }
    };
    let btf = ProgBtf { object: desc.btf as u32, func_info: records(desc.func_info), line_info: records(desc.line_info) };
    Some(StoredProgram {
        id,
        name: obj.name,
        section: desc::text(&desc.section),
        license: desc::text(&desc.license),
        insns: parse_bytecode(&code).ok()?,
        recursion_misses: desc.recursion_misses,
        btf,
        load_time: desc.load_time,
        uid: desc.uid as u32,
    })
}

/// Counts a hit that could not run program `id`.
pub fn count_miss(region: &ShmRegion, id: u32) {
    let Some(data) = region.object_data(id, ObjectKind::Program) else { return };
    if let Some(c) = region.atomic_u64(data + std::mem::offset_of!(ProgDesc, recursion_misses) as u64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The BTF object program `id` names (0: none), read alone (neither its code nor its records).
pub fn btf_of(region: &ShmRegion, id: u32) -> u32 {
    let Some(data) = region.object_data(id, ObjectKind::Program) else { return 0 };
    region.atomic_u64(data + std::mem::offset_of!(ProgDesc, btf) as u64).map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed) as u32)
}

/// The loader process holding program `id` (0: none), read alone.
pub fn owner_of(region: &ShmRegion, id: u32) -> u32 {
    let Some(data) = region.object_data(id, ObjectKind::Program) else { return 0 };
    region.atomic_u64(data + std::mem::offset_of!(ProgDesc, owner) as u64).map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed) as u32)
}

/// The ids of every program in the region.
pub fn ids(region: &ShmRegion) -> Vec<u32> {
    region.ids_of_kind(ObjectKind::Program).into_iter().map(|(id, _)| id).collect()
}

/// Every program in the region.
pub fn list(region: &ShmRegion) -> Vec<StoredProgram> {
    region.objects_of_kind(ObjectKind::Program).into_iter().filter_map(|o| load(region, o.id)).collect()
}
