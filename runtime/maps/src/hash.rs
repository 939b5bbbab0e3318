//! HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH and HASH_OF_MAPS.
//!
//! Like the kernel's preallocated hash map: a pool of `max_entries + 1` elements, a free list,
//! and buckets of singly linked chains. Readers never lock. A chain ends in a "nulls" marker
//! that names its bucket (`bucket << 1 | 1`); an element can be freed and reused while a reader
//! walks it, and a reader that ends on another bucket's marker starts again. Writers hold the
//! map lock. Replacing a value inserts a new element before unlinking the old one, so readers
//! see either value whole (per-CPU maps update in place, as the kernel does).
//!
//! LRU maps evict with the CLOCK algorithm: lookups set a reference bit, eviction sweeps the
//! pool from a hand, clearing bits, and evicts the first element whose bit was clear.

use crate::{check_update_flags, current_cpu, round8, Errno, Layout, Map, MapSpec, MapType, BPF_EXIST, BPF_NOEXIST};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Element header: next (u64), hash (u32), flags (u32).
const HDR: u64 = 16;
const IN_USE: u32 = 1;
const REFERENCED: u32 = 2;
/// Terminator of the free list: a nulls marker that matches no bucket.
const FREE_END: u64 = u64::MAX;

fn nulls(bucket: u64) -> u64 {
    bucket << 1 | 1
}

/// A fixed-seed hash, the same in every process. Keys are read as little-endian words; the
/// tail is assembled with shifts (a memcpy into a stack word would stall the following load).
#[inline]
pub(crate) fn hash_bytes(key: &[u8], seed: u64) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed ^ key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ v).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let tail = if rest.len() >= 4 {
            let lo = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as u64;
            rest[4..].iter().enumerate().fold(lo, |acc, (i, &b)| acc | (b as u64) << (32 + 8 * i))
        } else {
            rest.iter().enumerate().fold(0u64, |acc, (i, &b)| acc | (b as u64) << (8 * i))
        };
        h = (h ^ tail).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 29;
    }
    (h ^ (h >> 32)) as u32
}

fn value_stride(map: &Map) -> u64 {
    round8(map.spec().value_size as u64)
}

fn key_off(_map: &Map) -> u64 {
    HDR
}

fn value_off(map: &Map) -> u64 {
    HDR + round8(map.spec().key_size as u64)
}

/// The layout's sizes (offsets 0) for `spec`.
pub(crate) fn sizes(spec: &MapSpec, cpus: u64) -> Option<Layout> {
    let nbuckets = (spec.max_entries as u64).checked_next_power_of_two()?;
    let values = round8(spec.value_size as u64).checked_mul(if spec.map_type.is_percpu() { cpus } else { 1 })?;
    let elem_size = HDR + round8(spec.key_size as u64) + values;
    let pool = (spec.max_entries as u64 + 1).checked_mul(elem_size)?;
    Some(Layout { data_len: pool, aux_len: nbuckets.checked_mul(8)?, elem_size, ..Layout::default() })
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec, cpus: u64) -> Result<Layout, ShmError> {
    let l = sizes(spec, cpus).ok_or(ShmError::TooSmall(0))?;
    let (pool, elem_size, nbuckets) = (l.data_len, l.elem_size, l.aux_len / 8);
    let aux = region.alloc(nbuckets * 8)?;
    let data = match region.alloc(pool) {
        Ok(d) => d,
        Err(e) => {
            region.free(aux);
            return Err(e);
        }
    };
    Ok(Layout { data, data_len: pool, aux, aux_len: nbuckets * 8, elem_size, elem_count: 0 })
}

struct View<'a> {
    map: &'a Map,
    l: Layout,
    nbuckets: u64,
    pool: u64,
}

impl<'a> View<'a> {
    fn new(map: &'a Map) -> Self {
        let l = *map.layout();
        View { map, l, nbuckets: l.aux_len / 8, pool: l.elem_count }
    }

    fn bucket(&self, b: u64) -> &AtomicU64 {
        self.map.region().atomic_u64(self.l.aux + 8 * b).expect("bucket inside the validated layout")
    }

    /// Whether `e` may be used as an element: inside the pool and 8-aligned. (An offset
    /// into the middle of an element can only come from a scribbled region; it stays in
    /// bounds, which is what memory safety needs, and is cheaper than a division here.)
    fn valid(&self, e: u64) -> bool {
        e >= self.l.data && e.checked_add(self.l.elem_size).is_some_and(|end| end <= self.l.data + self.l.data_len) && e.is_multiple_of(8)
    }

    fn next(&self, e: u64) -> &AtomicU64 {
        self.map.region().atomic_u64(e).expect("valid element")
    }

    fn hash(&self, e: u64) -> &AtomicU32 {
        self.map.region().atomic_u32(e + 8).expect("valid element")
    }

    fn flags(&self, e: u64) -> &AtomicU32 {
        self.map.region().atomic_u32(e + 12).expect("valid element")
    }

    #[inline]
    fn key_eq(&self, e: u64, key: &[u8]) -> bool {
        let Some(p) = self.map.region().ptr(e + key_off(self.map), key.len() as u64) else { return false };
        // SAFETY: the range is inside the region; the bytes may change under us, which only
        // makes the comparison fail (the reader then moves on, as with the kernel's RCU). Keys
        // in elements are 8-aligned, so the word reads below are aligned.
        unsafe {
            match key.len() {
                4 => (p as *const u32).read() == u32::from_le_bytes(key.try_into().expect("4 bytes")),
                8 => (p as *const u64).read() == u64::from_le_bytes(key.try_into().expect("8 bytes")),
                n => std::slice::from_raw_parts(p, n) == key,
            }
        }
    }

    fn value_ptr(&self, e: u64, cpu: u32) -> u64 {
        e + value_off(self.map) + cpu as u64 * value_stride(self.map)
    }

    fn elem_at(&self, i: u64) -> u64 {
        self.l.data + i * self.l.elem_size
    }

    /// Lock-free lookup.
    fn find(&self, key: &[u8], h: u32) -> Option<u64> {
        let b = h as u64 & (self.nbuckets - 1);
        'restart: for _ in 0..8 {
            let mut cur = self.bucket(b).load(Ordering::Acquire);
            let mut steps = 0;
            while cur & 1 == 0 {
                if !self.valid(cur) || steps > self.pool {
                    return None;
                }
                if self.hash(cur).load(Ordering::Relaxed) == h && self.flags(cur).load(Ordering::Acquire) & IN_USE != 0 && self.key_eq(cur, key) {
                    return Some(cur);
                }
                cur = self.next(cur).load(Ordering::Acquire);
                steps += 1;
            }
            if cur >> 1 != b {
                continue 'restart;
            }
            return None;
        }
        None
    }

    /// Under the lock: the first element of bucket `b`'s chain that `pred` accepts, and the
    /// link that points at it.
    fn find_link(&self, b: u64, pred: impl Fn(u64) -> bool) -> Option<(&AtomicU64, u64)> {
        let mut link = self.bucket(b);
        for _ in 0..=self.pool {
            let cur = link.load(Ordering::Relaxed);
            if cur & 1 != 0 || !self.valid(cur) {
                return None;
            }
            if pred(cur) {
                return Some((link, cur));
            }
            link = self.next(cur);
        }
        None
    }

    /// Under the lock: the element holding `key` and the link that points at it.
    fn find_locked(&self, key: &[u8], h: u32) -> Option<(&AtomicU64, u64)> {
        self.find_link(h as u64 & (self.nbuckets - 1), |cur| {
            self.hash(cur).load(Ordering::Relaxed) == h && self.flags(cur).load(Ordering::Relaxed) & IN_USE != 0 && self.key_eq(cur, key)
        })
    }

    fn unlink(&self, e: u64) {
        let b = self.hash(e).load(Ordering::Relaxed) as u64 & (self.nbuckets - 1);
        if let Some((link, _)) = self.find_link(b, |cur| cur == e) {
            link.store(self.next(e).load(Ordering::Relaxed), Ordering::Release);
        }
    }

    fn pop_free(&self) -> Option<u64> {
        let d = self.map.desc();
        let e = d.free_head.load(Ordering::Relaxed);
        if !self.valid(e) {
            return None;
        }
        d.free_head.store(self.next(e).load(Ordering::Relaxed), Ordering::Relaxed);
        Some(e)
    }

    fn push_free(&self, e: u64) {
        let d = self.map.desc();
        self.flags(e).store(0, Ordering::Release);
        self.next(e).store(d.free_head.load(Ordering::Relaxed), Ordering::Release);
        d.free_head.store(e, Ordering::Relaxed);
    }

    /// CLOCK eviction: frees one element; false if none could be found.
    fn evict(&self) -> bool {
        let d = self.map.desc();
        for _ in 0..2 * self.pool {
            let i = d.hand.fetch_add(1, Ordering::Relaxed) % self.pool;
            let e = self.elem_at(i);
            let f = self.flags(e).load(Ordering::Relaxed);
            if f & IN_USE == 0 {
                continue;
            }
            if f & REFERENCED != 0 {
                self.flags(e).fetch_and(!REFERENCED, Ordering::Relaxed);
                continue;
            }
            self.unlink(e);
            self.push_free(e);
            d.count.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn is_lru(&self) -> bool {
        matches!(self.map.map_type(), MapType::LruHash | MapType::LruPercpuHash)
    }
}

pub(crate) fn init(map: &Map) {
    let v = View::new(map);
    for b in 0..v.nbuckets {
        v.bucket(b).store(nulls(b), Ordering::Relaxed);
    }
    let d = map.desc();
    d.free_head.store(FREE_END, Ordering::Relaxed);
    for i in (0..v.pool).rev() {
        v.push_free(v.elem_at(i));
    }
    d.count.store(0, Ordering::Relaxed);
}

/// After a writer died holding the lock: unlink duplicates, rebuild the free list and count
/// from what the buckets reach.
pub(crate) fn repair(map: &Map) {
    let v = View::new(map);
    let mut reached = vec![false; v.pool as usize];
    let mut count = 0;
    let ks = map.spec().key_size as usize;
    for b in 0..v.nbuckets {
        let mut link = v.bucket(b);
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for _ in 0..=v.pool {
            let cur = link.load(Ordering::Relaxed);
            if cur & 1 != 0 {
                break;
            }
            if !v.valid(cur) || reached[((cur - v.l.data) / v.l.elem_size) as usize] {
                // Corrupt or looping chain: cut it here.
                link.store(nulls(b), Ordering::Release);
                break;
            }
            let mut key = vec![0u8; ks];
            map.region().read(cur + key_off(map), &mut key);
            let live = v.flags(cur).load(Ordering::Relaxed) & IN_USE != 0;
            if !live || seen.contains(&key) {
                link.store(v.next(cur).load(Ordering::Relaxed), Ordering::Release);
                continue;
            }
            reached[((cur - v.l.data) / v.l.elem_size) as usize] = true;
            seen.push(key);
            count += 1;
            link = v.next(cur);
        }
    }
    let d = map.desc();
    d.free_head.store(FREE_END, Ordering::Relaxed);
    for i in (0..v.pool).rev() {
        if !reached[i as usize] {
            v.push_free(v.elem_at(i));
        }
    }
    d.count.store(count, Ordering::Relaxed);
}

fn copy_value_out(map: &Map, v: &View, e: u64, out: &mut [u8]) {
    let r = map.region();
    if map.map_type().is_percpu() {
        let stride = value_stride(map) as usize;
        let vs = map.spec().value_size as usize;
        for cpu in 0..map.ncpus() {
            let chunk = &mut out[cpu as usize * stride..][..stride];
            r.read(v.value_ptr(e, cpu), &mut chunk[..vs]);
            chunk[vs..].fill(0);
        }
    } else {
        r.read(v.value_ptr(e, 0), out);
    }
}

pub(crate) fn lookup(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let v = View::new(map);
    let e = v.find(key, hash_bytes(key, 0)).ok_or(Errno::ENOENT)?;
    copy_value_out(map, &v, e, value);
    Ok(())
}

pub(crate) fn lookup_ptr(map: &Map, key: &[u8]) -> Option<*mut u8> {
    if key.len() != map.spec().key_size as usize {
        return None;
    }
    let v = View::new(map);
    let e = v.find(key, hash_bytes(key, 0))?;
    if v.is_lru() {
        let f = v.flags(e);
        if f.load(Ordering::Relaxed) & REFERENCED == 0 {
            f.fetch_or(REFERENCED, Ordering::Relaxed);
        }
    }
    let cpu = if map.map_type().is_percpu() { current_cpu() } else { 0 };
    map.region().ptr(v.value_ptr(e, cpu), map.spec().value_size as u64)
}

/// How a new or replaced element gets its value.
enum Fill<'a> {
    /// The syscall side: the whole value (all CPUs' slots for per-CPU maps).
    All(&'a [u8]),
    /// A program's update of a per-CPU map: this CPU's slot; the others are zeroed when new.
    ThisCpu(&'a [u8]),
}

fn write_value(map: &Map, v: &View, e: u64, fill: &Fill, fresh: bool) {
    let r = map.region();
    let vs = map.spec().value_size as usize;
    match fill {
        Fill::All(value) if map.map_type().is_percpu() => {
            let stride = value_stride(map) as usize;
            for cpu in 0..map.ncpus() {
                r.write(v.value_ptr(e, cpu), &value[cpu as usize * stride..][..vs]);
            }
        }
        Fill::All(value) => {
            r.write(v.value_ptr(e, 0), value);
        }
        Fill::ThisCpu(value) => {
            let me = current_cpu();
            for cpu in 0..map.ncpus() {
                if cpu == me {
                    r.write(v.value_ptr(e, cpu), value);
                } else if fresh {
                    r.zero(v.value_ptr(e, cpu), vs as u64);
                }
            }
        }
    }
}

fn update_with(map: &Map, key: &[u8], fill: Fill, flags: u64) -> Result<(), Errno> {
    check_update_flags(flags)?;
    if map.map_type() == MapType::HashOfMaps {
        if let Fill::All(value) = fill {
            crate::array::check_inner(map, u32::from_le_bytes(value[..4].try_into().expect("value_size 4")))?;
        }
    }
    let v = View::new(map);
    let h = hash_bytes(key, 0);
    let _g = map.write_lock();
    let found = v.find_locked(key, h);
    let old = found.map(|(_, e)| e);
    if old.is_some() && flags == BPF_NOEXIST {
        return Err(Errno::EEXIST);
    }
    if old.is_none() && flags == BPF_EXIST {
        return Err(Errno::ENOENT);
    }
    let d = map.desc();
    if let (Some(e), true) = (old, map.map_type().is_percpu()) {
        // Per-CPU maps update in place, as the kernel does.
        write_value(map, &v, e, &fill, false);
        return Ok(());
    }
    if old.is_none() && d.count.load(Ordering::Relaxed) >= map.spec().max_entries as u64 && !(v.is_lru() && v.evict()) {
        return Err(Errno::E2BIG);
    }
    let e = match v.pop_free() {
        Some(e) => e,
        None if v.is_lru() && v.evict() => v.pop_free().ok_or(Errno::E2BIG)?,
        None => return Err(Errno::E2BIG),
    };
    v.hash(e).store(h, Ordering::Relaxed);
    map.region().write(e + key_off(map), key);
    write_value(map, &v, e, &fill, true);
    v.flags(e).store(IN_USE, Ordering::Release);
    let b = h as u64 & (v.nbuckets - 1);
    let bucket = v.bucket(b);
    let head = bucket.load(Ordering::Relaxed);
    v.next(e).store(head, Ordering::Relaxed);
    bucket.store(e, Ordering::Release);
    match found {
        Some((link, o)) => {
            // The old element's link: the new element's `next` if it was first in the chain.
            let link = if std::ptr::eq(link, bucket) { v.next(e) } else { link };
            link.store(v.next(o).load(Ordering::Relaxed), Ordering::Release);
            v.push_free(o);
        }
        None => {
            d.count.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

pub(crate) fn update(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    update_with(map, key, Fill::All(value), flags)
}

pub(crate) fn update_percpu_one(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    if key.len() != map.spec().key_size as usize || value.len() != map.spec().value_size as usize {
        return Err(Errno::EINVAL);
    }
    update_with(map, key, Fill::ThisCpu(value), flags)
}

pub(crate) fn delete(map: &Map, key: &[u8]) -> Result<(), Errno> {
    let v = View::new(map);
    let h = hash_bytes(key, 0);
    let _g = map.write_lock();
    let (link, e) = v.find_locked(key, h).ok_or(Errno::ENOENT)?;
    link.store(v.next(e).load(Ordering::Relaxed), Ordering::Release);
    v.push_free(e);
    map.desc().count.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

pub(crate) fn lookup_and_delete(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let v = View::new(map);
    let h = hash_bytes(key, 0);
    let _g = map.write_lock();
    let (link, e) = v.find_locked(key, h).ok_or(Errno::ENOENT)?;
    copy_value_out(map, &v, e, value);
    link.store(v.next(e).load(Ordering::Relaxed), Ordering::Release);
    v.push_free(e);
    map.desc().count.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

/// The first live element from `cur` along its chain (bounded by the pool size, so a corrupt
/// chain cannot loop forever).
fn first_live(v: &View, mut cur: u64) -> Option<u64> {
    let mut steps = 0;
    while cur & 1 == 0 && v.valid(cur) && steps <= v.pool {
        if v.flags(cur).load(Ordering::Acquire) & IN_USE != 0 {
            return Some(cur);
        }
        cur = v.next(cur).load(Ordering::Acquire);
        steps += 1;
    }
    None
}

/// Number of buckets (the positions of a batch walk).
pub(crate) fn bucket_count(map: &Map) -> u64 {
    View::new(map).nbuckets
}

/// The keys of the live elements in bucket `b`, in chain order.
pub(crate) fn bucket_keys(map: &Map, b: u64) -> Vec<Vec<u8>> {
    let v = View::new(map);
    let mut keys = Vec::new();
    let mut cur = first_live(&v, v.bucket(b).load(Ordering::Acquire));
    while let Some(e) = cur {
        if keys.len() as u64 > v.pool {
            break;
        }
        let mut key = vec![0u8; map.spec().key_size as usize];
        map.region().read(e + key_off(map), &mut key);
        keys.push(key);
        cur = first_live(&v, v.next(e).load(Ordering::Acquire));
    }
    keys
}

pub(crate) fn next_key(map: &Map, key: Option<&[u8]>, next: &mut [u8]) -> Result<(), Errno> {
    let v = View::new(map);
    let mut start_bucket = 0;
    let mut found = None;
    if let Some(k) = key {
        let h = hash_bytes(k, 0);
        if let Some(e) = v.find(k, h) {
            // The next live element in this chain, else the following buckets.
            found = first_live(&v, v.next(e).load(Ordering::Acquire));
            start_bucket = (h as u64 & (v.nbuckets - 1)) + 1;
        }
    }
    let found = found.or_else(|| (start_bucket..v.nbuckets).find_map(|b| first_live(&v, v.bucket(b).load(Ordering::Acquire))));
    match found {
        Some(e) => {
            map.region().read(e + key_off(map), next);
            Ok(())
        }
        None => Err(Errno::ENOENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Map, MapSpec, MapType};
    use std::sync::Arc;

    /// A writer that died holding the lock, after taking an element off the free list and
    /// after linking a replacement for key 1 without unlinking the old element: the next
    /// writer takes the lock over, repairs the map, and the map is whole again.
    #[test]
    fn repair_after_a_writer_died_mid_update() {
        let region = Arc::new(bpftime_shm::ShmRegion::anonymous(1 << 20).unwrap());
        let map = Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, 8, 4)).unwrap();
        map.update(&1u32.to_le_bytes(), &10u64.to_le_bytes(), 0).unwrap();
        map.update(&2u32.to_le_bytes(), &20u64.to_le_bytes(), 0).unwrap();
        let v = View::new(&map);
        let _leaked = v.pop_free().unwrap();
        let dup = v.pop_free().unwrap();
        let h = hash_bytes(&1u32.to_le_bytes(), 0);
        v.hash(dup).store(h, Ordering::Relaxed);
        map.region().write(dup + key_off(&map), &1u32.to_le_bytes());
        map.region().write(v.value_ptr(dup, 0), &11u64.to_le_bytes());
        v.flags(dup).store(IN_USE, Ordering::Release);
        let bucket = v.bucket(h as u64 & (v.nbuckets - 1));
        v.next(dup).store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket.store(dup, Ordering::Release);
        map.desc().lock.force_holder(0x3fff_fff0); // a pid that cannot exist
        map.update(&3u32.to_le_bytes(), &30u64.to_le_bytes(), 0).unwrap();
        let mut keys = map.keys();
        keys.sort();
        assert_eq!(keys, vec![1u32.to_le_bytes().to_vec(), 2u32.to_le_bytes().to_vec(), 3u32.to_le_bytes().to_vec()]);
        assert_eq!(map.len(), 3);
        let mut val = [0u8; 8];
        map.lookup(&1u32.to_le_bytes(), &mut val).unwrap();
        assert_eq!(u64::from_le_bytes(val), 11, "the newer element wins");
        // Full capacity again: one more key fits, then E2BIG.
        map.update(&4u32.to_le_bytes(), &40u64.to_le_bytes(), 0).unwrap();
        assert_eq!(map.update(&5u32.to_le_bytes(), &0u64.to_le_bytes(), 0), Err(Errno::E2BIG));
        map.delete(&1u32.to_le_bytes()).unwrap();
        assert_eq!(map.lookup(&1u32.to_le_bytes(), &mut val), Err(Errno::ENOENT));
    }
}
