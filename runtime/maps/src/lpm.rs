//! LPM_TRIE: longest-prefix match over keys `{ u32 prefixlen; u8 data[] }`.
//!
//! Kept as a pool of `max_entries` entries scanned linearly (tracing maps of prefixes are
//! small); writers hold the map lock, lookups scan without it. Semantics follow the kernel:
//! lookups return the longest stored prefix that covers the key, updates and deletes match
//! prefixes exactly, a full trie refuses new prefixes with ENOSPC.

use crate::{check_update_flags, round8, Errno, Layout, Map, MapSpec, BPF_EXIST, BPF_NOEXIST};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

/// Entry header: in-use flag (u32), prefix length (u32).
const HDR: u64 = 8;

/// The layout's sizes (offsets 0) for `spec`.
pub(crate) fn sizes(spec: &MapSpec) -> Option<Layout> {
    let elem = HDR + round8((spec.key_size as u64).checked_sub(4)?) + round8(spec.value_size as u64);
    let len = elem.checked_mul(spec.max_entries as u64)?;
    Some(Layout { data_len: len, elem_size: elem, ..Layout::default() })
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec) -> Result<Layout, ShmError> {
    let l = sizes(spec).ok_or(ShmError::TooSmall(0))?;
    Ok(Layout { data: region.alloc(l.data_len)?, ..l })
}

struct Key<'a> {
    prefixlen: u32,
    data: &'a [u8],
}

fn parse(key: &[u8]) -> Result<Key<'_>, Errno> {
    let prefixlen = u32::from_le_bytes(key[..4].try_into().map_err(|_| Errno::EINVAL)?);
    Ok(Key { prefixlen, data: &key[4..] })
}

/// Whether the first `bits` bits of `a` and `b` agree (false when either is shorter: a prefix
/// length read from the region or given by a program may be anything).
fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    if bits as usize > 8 * a.len().min(b.len()) {
        return false;
    }
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0
}

fn entries(map: &Map) -> impl Iterator<Item = u64> + '_ {
    let l = *map.layout();
    (0..map.spec().max_entries as u64).map(move |i| l.data + i * l.elem_size)
}

fn in_use(map: &Map, e: u64) -> bool {
    map.region().atomic_u32(e).map(|a| a.load(Ordering::Acquire) != 0).unwrap_or(false)
}

/// Most data bytes a key has (the kernel's limit; checked when the map is made).
const MAX_DATA: usize = 256;

/// The prefix stored in entry `e`, copied into `buf` (writers may change it meanwhile).
fn stored<'b>(map: &Map, e: u64, buf: &'b mut [u8; MAX_DATA]) -> (u32, &'b [u8]) {
    let plen = map.region().atomic_u32(e + 4).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
    let data = &mut buf[..(map.spec().key_size as usize - 4).min(MAX_DATA)];
    map.region().read(e + HDR, data);
    (plen, data)
}

fn value_off(map: &Map, e: u64) -> u64 {
    e + HDR + round8(map.spec().key_size as u64 - 4)
}

fn longest_match(map: &Map, key: &Key) -> Option<u64> {
    let mut best: Option<(u32, u64)> = None;
    let mut buf = [0u8; MAX_DATA];
    for e in entries(map) {
        if !in_use(map, e) {
            continue;
        }
        let (plen, data) = stored(map, e, &mut buf);
        if plen <= key.prefixlen && prefix_eq(data, key.data, plen) && best.is_none_or(|(b, _)| plen > b) {
            best = Some((plen, e));
        }
    }
    best.map(|(_, e)| e)
}

fn exact(map: &Map, key: &Key) -> Option<u64> {
    let mut buf = [0u8; MAX_DATA];
    entries(map).find(|&e| {
        in_use(map, e) && {
            let (plen, data) = stored(map, e, &mut buf);
            plen == key.prefixlen && prefix_eq(data, key.data, plen)
        }
    })
}

pub(crate) fn lookup(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let k = parse(key)?;
    let e = longest_match(map, &k).ok_or(Errno::ENOENT)?;
    map.region().read(value_off(map, e), value);
    Ok(())
}

pub(crate) fn lookup_ptr(map: &Map, key: &[u8]) -> Option<*mut u8> {
    if key.len() != map.spec().key_size as usize {
        return None;
    }
    let k = parse(key).ok()?;
    let e = longest_match(map, &k)?;
    map.region().ptr(value_off(map, e), map.spec().value_size as u64)
}

pub(crate) fn update(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    check_update_flags(flags)?;
    let k = parse(key)?;
    if k.prefixlen as usize > k.data.len() * 8 {
        return Err(Errno::EINVAL);
    }
    let _g = map.write_lock();
    let found = exact(map, &k);
    if found.is_some() && flags == BPF_NOEXIST {
        return Err(Errno::EEXIST);
    }
    if found.is_none() && flags == BPF_EXIST {
        return Err(Errno::ENOENT);
    }
    let r = map.region();
    if let Some(e) = found {
        r.write(value_off(map, e), value);
        return Ok(());
    }
    let d = map.desc();
    if d.count.load(Ordering::Relaxed) >= map.spec().max_entries as u64 {
        return Err(Errno::ENOSPC);
    }
    let e = entries(map).find(|&e| !in_use(map, e)).ok_or(Errno::ENOSPC)?;
    r.atomic_u32(e + 4).ok_or(Errno::EFAULT)?.store(k.prefixlen, Ordering::Relaxed);
    r.write(e + HDR, k.data);
    r.write(value_off(map, e), value);
    r.atomic_u32(e).ok_or(Errno::EFAULT)?.store(1, Ordering::Release);
    d.count.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub(crate) fn delete(map: &Map, key: &[u8]) -> Result<(), Errno> {
    let k = parse(key)?;
    let _g = map.write_lock();
    let e = exact(map, &k).ok_or(Errno::ENOENT)?;
    map.region().atomic_u32(e).ok_or(Errno::EFAULT)?.store(0, Ordering::Release);
    map.desc().count.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

pub(crate) fn next_key(map: &Map, key: Option<&[u8]>, next: &mut [u8]) -> Result<(), Errno> {
    let all: Vec<u64> = entries(map).filter(|&e| in_use(map, e)).collect();
    let start = match key.map(parse).transpose()?.and_then(|k| exact(map, &k)) {
        Some(e) => all.iter().position(|&x| x == e).map(|p| p + 1).unwrap_or(0),
        None => 0,
    };
    let e = *all.get(start).ok_or(Errno::ENOENT)?;
    let mut buf = [0u8; MAX_DATA];
    let (plen, data) = stored(map, e, &mut buf);
    next[..4].copy_from_slice(&plen.to_le_bytes());
    next[4..].copy_from_slice(data);
    Ok(())
}
