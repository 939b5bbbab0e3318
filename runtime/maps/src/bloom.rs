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

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec) -> Result<Layout, ShmError> {
    // About 7/5 bits per element and hash function, rounded to a power of two.
    let bits = (spec.max_entries as u64 * nr_hashes(spec) * 7 / 5).max(64).next_power_of_two();
    let bytes = bits / 8;
    Ok(Layout { data: region.alloc(bytes)?, data_len: bytes, ..Layout::default() })
}

fn bits_of<'m>(map: &'m Map, value: &[u8]) -> impl Iterator<Item = u64> + 'm {
    let nbits = map.layout().data_len * 8;
    let value = value.to_vec();
    (0..nr_hashes(map.spec())).map(move |i| hash_bytes(&value, i.wrapping_mul(0x5851_f42d_4c95_7f2d)) as u64 & (nbits - 1))
}

pub(crate) fn push(map: &Map, value: &[u8], flags: u64) -> Result<(), Errno> {
    if flags != BPF_ANY || value.len() != map.spec().value_size as usize {
        return Err(Errno::EINVAL);
    }
    let data = map.layout().data;
    for bit in bits_of(map, value).collect::<Vec<_>>() {
        let word = map.region().atomic_u64(data + (bit / 64) * 8).ok_or(Errno::EFAULT)?;
        word.fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }
    Ok(())
}

pub(crate) fn peek(map: &Map, value: &mut [u8]) -> Result<(), Errno> {
    if value.len() != map.spec().value_size as usize {
        return Err(Errno::EINVAL);
    }
    let data = map.layout().data;
    for bit in bits_of(map, value).collect::<Vec<_>>() {
        let word = map.region().atomic_u64(data + (bit / 64) * 8).ok_or(Errno::EFAULT)?;
        if word.load(Ordering::Relaxed) & (1 << (bit % 64)) == 0 {
            return Err(Errno::ENOENT);
        }
    }
    Ok(())
}
