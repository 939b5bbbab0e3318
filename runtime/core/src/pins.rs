//! Pinned objects: bpffs paths (`BPF_OBJ_PIN`) kept in the region, so that a map, program or
//! link outlives the process that made it and another process opens it by path
//! (`BPF_OBJ_GET`), as with the kernel's bpffs. A pin is an object of its own that names its
//! target's id; the path is what identifies it.

use crate::desc::{self, Plain};
use bpftime_shm::{ObjectKind, ShmError, ShmRegion};

const PIN_MAGIC: u64 = 0x6270_665f_7069_6e21; // "bpf_pin!"
/// Longest pinned path, in bytes.
pub const PATH_LEN: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy)]
struct PinDesc {
    magic: u64,
    target: u32,
    _pad: u32,
    path: [u8; PATH_LEN],
}

// SAFETY: integers and a byte array, no padding (8 + 4 + 4 + 1024 bytes), any bits valid.
unsafe impl Plain for PinDesc {}

/// Why a path could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The path is pinned already (`EEXIST`).
    #[error("{0} is pinned already")]
    Exists(String),
    /// The path is longer than [`PATH_LEN`] bytes (`ENAMETOOLONG`).
    #[error("pin path longer than {PATH_LEN} bytes")]
    TooLong,
    /// The region is full.
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// A pinned path and the object it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Pin object id.
    pub id: u32,
    /// The path.
    pub path: String,
    /// Id of the pinned map, program or link.
    pub target: u32,
}

/// Every pin, oldest first.
pub fn list(region: &ShmRegion) -> Vec<Pin> {
    let mut pins: Vec<Pin> = region
        .objects()
        .into_iter()
        .filter(|o| o.kind == ObjectKind::Pin)
        .filter_map(|o| {
            let d = desc::load::<PinDesc>(region, o.data)?;
            (d.magic == PIN_MAGIC).then(|| Pin { id: o.id, path: desc::text(&d.path), target: d.target })
        })
        .collect();
    pins.sort_by_key(|p| p.id);
    pins
}

/// Pins object `target` at `path` (an absolute, normalised path).
pub fn pin(region: &ShmRegion, path: &str, target: u32) -> Result<u32, PinError> {
    if path.len() >= PATH_LEN {
        return Err(PinError::TooLong);
    }
    if get(region, path).is_some() {
        return Err(PinError::Exists(path.into()));
    }
    let mut d = PinDesc { magic: PIN_MAGIC, target, _pad: 0, path: [0; PATH_LEN] };
    desc::fill(&mut d.path, path);
    let id = desc::store(region, ObjectKind::Pin, path, &d)?;
    // Two processes pinning one path at once: the older pin wins, as one of two racing
    // creations of a bpffs file does.
    if list(region).iter().any(|p| p.path == path && p.id < id) {
        region.remove_object(id);
        return Err(PinError::Exists(path.into()));
    }
    Ok(id)
}

/// The object pinned at `path`, while it exists.
pub fn get(region: &ShmRegion, path: &str) -> Option<u32> {
    list(region).into_iter().find(|p| p.path == path).map(|p| p.target).filter(|&t| region.object(t).is_some())
}

/// Removes the pin at `path`; returns the object it named.
pub fn unpin(region: &ShmRegion, path: &str) -> Option<u32> {
    let p = list(region).into_iter().find(|p| p.path == path)?;
    region.remove_object(p.id);
    Some(p.target)
}

/// Whether some path pins object `id`.
pub fn is_pinned(region: &ShmRegion, id: u32) -> bool {
    list(region).iter().any(|p| p.target == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_get_unpin() {
        let r = ShmRegion::anonymous(8 << 20).unwrap();
        let target = r.add_object(ObjectKind::Map, "m", 0).unwrap();
        let path = "/sys/fs/bpf/a/very/long/path/that/does/not/fit/in/the/object/table/name/m";
        pin(&r, path, target).unwrap();
        assert_eq!(get(&r, path), Some(target));
        assert!(is_pinned(&r, target));
        assert!(matches!(pin(&r, path, target), Err(PinError::Exists(_))));
        assert!(matches!(pin(&r, &"x".repeat(PATH_LEN), target), Err(PinError::TooLong)));
        assert_eq!(get(&r, "/sys/fs/bpf/other"), None);
        assert_eq!(unpin(&r, path), Some(target));
        assert_eq!(get(&r, path), None);
        assert!(!is_pinned(&r, target));
        // A pin whose object went away opens nothing.
        pin(&r, path, target).unwrap();
        r.remove_object(target);
        assert_eq!(get(&r, path), None);
    }
}
