//! Type information (BTF) kept in the shared region: what a loader gave `BPF_BTF_LOAD` (or an
//! object's `.BTF` that `bpftime load` read), so that any process, bpftool among them, can
//! read the types a map's keys and values are described by (`Map::btf`), as it reads the
//! kernel's BTF objects by id.

use crate::desc::{self, Plain};
use bpftime_shm::{ObjectKind, ShmRegion};

const BTF_MAGIC: u64 = 0x6270_665f_6274_6631; // "bpf_btf1"

/// The most BTF bytes one object may hold (the kernel's `BTF_MAX_SIZE`).
pub const MAX_SIZE: usize = 16 << 20;

#[repr(C)]
#[derive(Clone, Copy)]
struct BtfDesc {
    magic: u64,
    len: u64,
    data: u64,
    /// The loader process whose fd holds it (0: none): see `crate::orphans`.
    owner: u64,
}

// SAFETY: four u64s: no padding, any bit pattern valid.
unsafe impl Plain for BtfDesc {}

/// Stores `data` (raw BTF: header, types, strings) held by loader process `owner` (0: none);
/// returns its object id.
pub fn store(region: &ShmRegion, data: &[u8], owner: u32) -> Result<u32, bpftime_shm::ShmError> {
    let off = region.alloc(data.len().max(1) as u64)?;
    region.write(off, data);
    desc::store(region, ObjectKind::Btf, "btf", &BtfDesc { magic: BTF_MAGIC, len: data.len() as u64, data: off, owner: owner as u64 })
}

/// The loader process holding BTF object `id` (0: none).
pub fn owner_of(region: &ShmRegion, id: u32) -> u32 {
    let Some(obj) = region.object(id).filter(|o| o.kind == ObjectKind::Btf) else { return 0 };
    desc::load::<BtfDesc>(region, obj.data).filter(|d| d.magic == BTF_MAGIC).map_or(0, |d| d.owner as u32)
}

/// The bytes of BTF object `id`.
pub fn load(region: &ShmRegion, id: u32) -> Option<Vec<u8>> {
    let obj = region.object(id).filter(|o| o.kind == ObjectKind::Btf)?;
    let d: BtfDesc = desc::load(region, obj.data)?;
    if d.magic != BTF_MAGIC || d.len as usize > MAX_SIZE {
        return None;
    }
    let mut data = vec![0u8; d.len as usize];
    region.read(d.data, &mut data).then_some(data)
}

/// The ids of every BTF object, in ascending order.
pub fn list(region: &ShmRegion) -> Vec<u32> {
    let mut ids: Vec<u32> = region.ids_of_kind(ObjectKind::Btf).into_iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    ids
}

/// Removes BTF object `id`; its bytes are freed after the region's grace period.
pub fn remove(region: &ShmRegion, id: u32) {
    let Some(obj) = region.object(id).filter(|o| o.kind == ObjectKind::Btf) else { return };
    let d: Option<BtfDesc> = desc::load(region, obj.data);
    if region.remove_object(id).is_some() {
        if let Some(d) = d.filter(|d| d.magic == BTF_MAGIC) {
            region.retire(d.data);
        }
        region.retire(obj.data);
    }
}
