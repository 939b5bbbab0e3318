//! STACK_TRACE: stack ids to arrays of instruction pointers (or, in a map made with
//! `BPF_F_STACK_BUILD_ID`, of `struct bpf_stack_build_id` records), filled by
//! `bpf_get_stackid`. Slot `id` holds the number of frames (0 = empty) and then the frames.

use crate::hash::hash_bytes;
use crate::{Errno, Layout, Map, MapSpec};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

/// `BPF_F_REUSE_STACKID`: overwrite a different stack that hashed to the same id.
pub const BPF_F_REUSE_STACKID: u64 = 1 << 10;

/// `BPF_F_STACK_BUILD_ID` map flag: frames are `struct bpf_stack_build_id` records.
pub const BPF_F_STACK_BUILD_ID: u32 = 1 << 5;

/// The size of a `struct bpf_stack_build_id` (status, 20-byte build id, offset or ip).
pub const BUILD_ID_FRAME: usize = 32;

/// The layout's sizes (offsets 0) for `spec`.
pub(crate) fn sizes(spec: &MapSpec) -> Option<Layout> {
    let elem = 8 + spec.value_size as u64;
    Some(Layout { data_len: elem.checked_mul(spec.max_entries as u64)?, elem_size: elem, ..Layout::default() })
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec) -> Result<Layout, ShmError> {
    let l = sizes(spec).ok_or(ShmError::TooSmall(0))?;
    Ok(Layout { data: region.alloc(l.data_len)?, ..l })
}

fn slot(map: &Map, id: u32) -> u64 {
    map.layout().data + id as u64 * map.layout().elem_size
}

fn frames(map: &Map, id: u32) -> u64 {
    map.region().atomic_u64(slot(map, id)).map(|a| a.load(Ordering::Acquire)).unwrap_or(0)
}

fn id_of(key: &[u8]) -> u32 {
    u32::from_le_bytes(key[..4].try_into().expect("key_size 4"))
}

/// The size of one frame in `map`: an address, or a `struct bpf_stack_build_id` in a map made
/// with [`BPF_F_STACK_BUILD_ID`].
pub(crate) fn frame_size(map: &Map) -> usize {
    if map.spec().flags & BPF_F_STACK_BUILD_ID != 0 {
        BUILD_ID_FRAME
    } else {
        8
    }
}

/// Stores a stack (whole frame records, those past the map's depth dropped) and returns its id,
/// without allocating (programs store stacks from probes, which may have interrupted the
/// allocator).
pub(crate) fn store(map: &Map, records: &[u8], flags: u64) -> Result<u32, Errno> {
    let bytes = &records[..records.len().min(map.spec().value_size as usize)];
    let count = bytes.len() / frame_size(map);
    if count == 0 {
        return Err(Errno::EFAULT);
    }
    let bytes = &bytes[..count * frame_size(map)];
    let id = hash_bytes(bytes, 0x57ac) % map.spec().max_entries;
    let _g = map.write_lock();
    let n = frames(map, id);
    let at = slot(map, id) + 8;
    if n != 0 {
        if n as usize == count && same_bytes(map, at, bytes) {
            return Ok(id);
        }
        if flags & BPF_F_REUSE_STACKID == 0 {
            return Err(Errno::EEXIST);
        }
    }
    map.region().write(at, bytes);
    let zeroes = [0u8; 256];
    let mut off = bytes.len();
    while off < map.spec().value_size as usize {
        let n = (map.spec().value_size as usize - off).min(zeroes.len());
        map.region().write(at + off as u64, &zeroes[..n]);
        off += n;
    }
    map.region().atomic_u64(slot(map, id)).ok_or(Errno::EFAULT)?.store(count as u64, Ordering::Release);
    Ok(id)
}

/// Whether the region holds `bytes` at `at`.
fn same_bytes(map: &Map, at: u64, bytes: &[u8]) -> bool {
    let mut chunk = [0u8; 256];
    bytes.chunks(chunk.len()).enumerate().all(|(i, want)| {
        let got = &mut chunk[..want.len()];
        map.region().read(at + (i * 256) as u64, got);
        got == want
    })
}

pub(crate) fn lookup(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let id = id_of(key);
    if id >= map.spec().max_entries || frames(map, id) == 0 {
        return Err(Errno::ENOENT);
    }
    map.region().read(slot(map, id) + 8, value);
    Ok(())
}

pub(crate) fn lookup_ptr(map: &Map, key: &[u8]) -> Option<*mut u8> {
    let id = id_of(key);
    if id >= map.spec().max_entries || frames(map, id) == 0 {
        return None;
    }
    map.region().ptr(slot(map, id) + 8, map.spec().value_size as u64)
}

pub(crate) fn delete(map: &Map, key: &[u8]) -> Result<(), Errno> {
    let id = id_of(key);
    if id >= map.spec().max_entries {
        return Err(Errno::ENOENT);
    }
    let _g = map.write_lock();
    let a = map.region().atomic_u64(slot(map, id)).ok_or(Errno::EFAULT)?;
    if a.swap(0, Ordering::AcqRel) == 0 {
        return Err(Errno::ENOENT);
    }
    Ok(())
}

pub(crate) fn next_key(map: &Map, key: Option<&[u8]>, next: &mut [u8]) -> Result<(), Errno> {
    let max = map.spec().max_entries;
    let mut id = match key.map(id_of) {
        None => 0,
        Some(i) if i >= max || frames(map, i) == 0 => 0,
        Some(i) => i + 1,
    };
    while id < max && frames(map, id) == 0 {
        id += 1;
    }
    if id >= max {
        return Err(Errno::ENOENT);
    }
    next.copy_from_slice(&id.to_le_bytes());
    Ok(())
}
