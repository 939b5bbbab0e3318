//! BLOOM_FILTER: a bit array set with `nr_hash_funcs` (the low 4 bits of `map_extra`, 5 by
//! default) hashes of each pushed value. No false negatives; lookups of values never pushed
//! may succeed (false positives), as in the kernel.

use crate::hash::hash_bytes;
use crate::{Errno, Layout, Map, MapSpec, BPF_ANY};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

fn nr_hashes(spec: &MapSpec) -> u64 {
    match spec.map_extra & 0xf {
        0 => 5,
        n => n,
    }
}

/// The layout's sizes (offsets 0) for `spec`.
pub(crate) fn sizes(spec: &MapSpec) -> Option<Layout> {
    // About 7/5 bits per element and hash function, rounded to a power of two.
    let bits = (spec.max_entries as u64).checked_mul(nr_hashes(spec))?.checked_mul(7)? / 5;
    let bytes = bits.max(64).checked_next_power_of_two()? / 8;
    Some(Layout { data_len: bytes, ..Layout::default() })
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec) -> Result<Layout, ShmError> {
    let l = sizes(spec).ok_or(ShmError::TooSmall(0))?;
    Ok(Layout { data: region.alloc(l.data_len)?, ..l })
}

/// The bits `value` sets: (word offset in the region, bit mask).
fn bits_of<'a>(map: &'a Map, value: &'a [u8]) -> impl Iterator<Item = (u64, u64)> + 'a {
    let nbits = map.layout().data_len * 8;
    let data = map.layout().data;
    (0..nr_hashes(map.spec())).map(move |i| {
        let bit = hash_bytes(value, i.wrapping_mul(0x5851_f42d_4c95_7f2d)) as u64 & (nbits - 1);
        (data + (bit / 64) * 8, 1 << (bit % 64))
    })
}

pub(crate) fn push(map: &Map, value: &[u8], flags: u64) -> Result<(), Errno> {
    if flags != BPF_ANY {
        return Err(Errno::EINVAL);
    }
    for (word, mask) in bits_of(map, value) {
        map.region().atomic_u64(word).ok_or(Errno::EFAULT)?.fetch_or(mask, Ordering::Relaxed);
    }
    Ok(())
}

pub(crate) fn peek(map: &Map, value: &mut [u8]) -> Result<(), Errno> {
    for (word, mask) in bits_of(map, value) {
        if map.region().atomic_u64(word).ok_or(Errno::EFAULT)?.load(Ordering::Relaxed) & mask == 0 {
            return Err(Errno::ENOENT);
        }
    }
    Ok(())
}
