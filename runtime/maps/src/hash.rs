//! HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH and HASH_OF_MAPS.
//!
//! Like the kernel's preallocated hash map: a pool of elements (`max_entries`, one more per
//! free list and one spare), free lists, and buckets of singly linked chains. Readers never lock. A chain ends in a "nulls" marker
//! that names its bucket (`bucket << 1 | 1`); an element can be freed and reused while a reader
//! walks it, and a reader that ends on another bucket's marker starts again. Writers hold their
//! bucket's lock only, as the kernel's htab does, so writers of different buckets do not wait
//! for each other. Replacing a value inserts a new element before unlinking the old one, so
//! readers see either value whole (per-CPU maps update in place, as the kernel does, and so do
//! values of 4 or 8 bytes, with one atomic store and without the lock: see
//! [`View::store_in_place`]). Values lie out of line, so that writing one touches no line a
//! chain walk reads.
//!
//! Buckets are guarded by lock stripes (one per bucket up to 1,024, each on its own cache
//! line). Free elements: each stripe keeps one spare (the element its last replacement or
//! deletion freed, reused by its next one without touching shared memory), the rest sit on
//! [`FREE_LISTS`] lists picked by CPU. Every change a writer makes is a single store that leaves
//! the chains whole, so a writer that dies holding a lock leaves at most a duplicate key (the
//! newer element first, which readers find) and elements lost to the pool; whoever takes its
//! lock over rebuilds the map with every lock held ([`repair`]).
//!
//! LRU maps evict with the CLOCK algorithm: lookups set a reference bit, eviction sweeps the
//! pool from a hand, clearing bits, and evicts the first element whose bit was clear.

use crate::{check_update_flags, current_cpu, percpu_block, round8, Errno, Layout, Map, MapSpec, MapType, ValueBlocks, BPF_EXIST, BPF_NOEXIST, CACHE_LINE};
use bpftime_shm::{ShmError, ShmGuard, ShmLock, ShmRegion, Span, Words};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Element header: next (u64), hash (u32), flags (u32).
const HDR: u64 = 16;
/// An element's header in the region.
type Header<'a> = Words<'a, { HDR as usize }>;
const IN_USE: u32 = 1;
const REFERENCED: u32 = 2;
/// Terminator of a free list: a nulls marker that matches no bucket.
const FREE_END: u64 = u64::MAX;
/// Free lists per map (picked by CPU, so that writers on different CPUs do not share one).
const FREE_LISTS: u64 = 16;
/// Bytes per free list: its lock and head, alone on a cache line.
const FREE_LIST_SIZE: u64 = 64;
/// Bytes per lock stripe: a lock and a spare free element, alone on a cache line (writers of
/// different stripes never share a line).
const STRIPE_SIZE: u64 = 64;
/// Most lock stripes per map: bucket `b` is guarded by stripe `b % stripes`.
const MAX_STRIPES: u64 = 1024;

fn nulls(bucket: u64) -> u64 {
    bucket << 1 | 1
}

/// A fixed-seed hash, the same in every process. Keys are read as little-endian words; the
/// tail is assembled with shifts (a memcpy into a stack word would stall the following load).
#[inline]
pub(crate) fn hash_bytes(key: &[u8], seed: u64) -> u32 {
    // The commonest keys (a u32 id, a u64) without the loops: the same values as below.
    let start = hash_start(key, seed);
    if let Ok(k) = <[u8; 4]>::try_from(key) {
        let mut h = (start ^ u32::from_le_bytes(k) as u64).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 29;
        return (h ^ (h >> 32)) as u32;
    }
    if let Ok(k) = <[u8; 8]>::try_from(key) {
        let mut h = (start ^ u64::from_le_bytes(k)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        return (h ^ (h >> 32)) as u32;
    }
    hash_any(key, start)
}

/// The value [`hash_bytes`] starts from.
fn hash_start(key: &[u8], seed: u64) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ seed ^ key.len() as u64
}

/// [`hash_bytes`] of any key from its start value.
fn hash_any(key: &[u8], start: u64) -> u32 {
    let mut h: u64 = start;
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

fn key_off(_map: &Map) -> u64 {
    HDR
}

/// Bytes of an element's value slot: its value, after a retirement count in maps that are not
/// per-CPU (see [`View::store_in_place`]); 16-aligned there.
fn value_slot(spec: &MapSpec) -> u64 {
    let value = round8(spec.value_size as u64);
    if spec.map_type.is_percpu() {
        value
    } else {
        (RETIREMENTS + value).next_multiple_of(16)
    }
}

/// Bytes of the word before a value (maps that are not per-CPU) that counts the element's
/// retirements ([`View::retire`]): an in-place writer that stores without the bucket lock
/// replaces count and value together, so it cannot store into an element freed after it
/// looked.
const RETIREMENTS: u64 = 8;

/// Buckets of a map of `max_entries`.
fn bucket_count_of(max_entries: u32) -> Option<u64> {
    (max_entries as u64).checked_next_power_of_two()
}

/// The layout's sizes (offsets 0) for `spec`: `max_entries` elements plus one per stripe (its
/// spare), one per free list and one more (replacements take a new element before they free
/// the old one, as the kernel's per-CPU extra elements allow); buckets, stripes and free lists
/// in `aux`. Elements hold a header and a key (their size is a power of two, so that an
/// element's index is a shift away); values are out of line, after `aux`'s fixed part, one
/// block per CPU in per-CPU maps (see [`value_blocks`]). Writing a value thus never touches
/// the lines that readers walking a chain read: writers of keys that share a bucket do not
/// take turns at a cache line.
pub(crate) fn sizes(spec: &MapSpec, cpus: u64) -> Option<Layout> {
    let nbuckets = bucket_count_of(spec.max_entries)?;
    let elem_size = (HDR + round8(spec.key_size as u64)).checked_next_power_of_two()?;
    // One spare per stripe on top, so that spares never starve the free lists.
    let elems = spec.max_entries as u64 + nbuckets.min(MAX_STRIPES) + FREE_LISTS + 1;
    let pool = elems.checked_mul(elem_size)?;
    let blocks = if spec.map_type.is_percpu() { cpus } else { 1 };
    let values = percpu_block(elems, value_slot(spec))?.checked_mul(blocks)?;
    let aux = fixed_aux(nbuckets)?.checked_add(CACHE_LINE)?.checked_add(values)?;
    Some(Layout { data_len: pool, aux_len: aux, elem_size, ..Layout::default() })
}

/// Where values are (see [`crate::Map::value_blocks`]): after `aux`'s fixed part, from its
/// first cache line boundary on, the slot of element `i` (CPU `c`'s, in a per-CPU map) at
/// `c * block + i * slot`.
pub(crate) fn value_blocks(spec: &MapSpec, l: &Layout) -> ValueBlocks {
    let nbuckets = bucket_count_of(spec.max_entries).expect("a validated spec");
    let first = (l.aux + fixed_aux(nbuckets).expect("a validated spec")).next_multiple_of(CACHE_LINE);
    let slot = value_slot(spec);
    let block = percpu_block(l.elem_count, slot).expect("a validated spec");
    ValueBlocks { first, block, slot, lead: if spec.map_type.is_percpu() { 0 } else { RETIREMENTS } }
}

/// Bytes of `aux` before a per-CPU map's values: buckets, stripes, free lists.
fn fixed_aux(nbuckets: u64) -> Option<u64> {
    nbuckets.checked_mul(8)?.checked_add(nbuckets.min(MAX_STRIPES) * STRIPE_SIZE)?.checked_add(FREE_LISTS * FREE_LIST_SIZE)
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec, cpus: u64) -> Result<Layout, ShmError> {
    let l = sizes(spec, cpus).ok_or(ShmError::TooSmall(0))?;
    let (pool, elem_size, aux_len) = (l.data_len, l.elem_size, l.aux_len);
    let aux = region.alloc(aux_len)?;
    let data = match region.alloc(pool) {
        Ok(d) => d,
        Err(e) => {
            region.free(aux);
            return Err(e);
        }
    };
    Ok(Layout { data, data_len: pool, aux, aux_len, elem_size, elem_count: 0 })
}

struct View<'a> {
    map: &'a Map,
    /// The region's mapping, in registers (its accessors check bounds as the region's do).
    span: Span<'a>,
    l: Layout,
    nbuckets: u64,
    pool: u64,
}

impl<'a> View<'a> {
    #[inline]
    fn new(map: &'a Map) -> Self {
        let l = *map.layout();
        let nbuckets = bucket_count_of(map.spec().max_entries).expect("a validated spec");
        View { map, span: map.region().span(), l, nbuckets, pool: l.elem_count }
    }

    fn bucket(&self, b: u64) -> &AtomicU64 {
        self.span.atomic_u64(self.l.aux + 8 * b).expect("bucket inside the validated layout")
    }

    fn bucket_of(&self, h: u32) -> u64 {
        h as u64 & (self.nbuckets - 1)
    }

    fn stripes(&self) -> u64 {
        self.nbuckets.min(MAX_STRIPES)
    }

    /// The stripe guarding bucket `b`.
    fn stripe_of(&self, b: u64) -> u64 {
        b & (self.stripes() - 1)
    }

    fn stripe_at(&self, s: u64) -> u64 {
        self.l.aux + 8 * self.nbuckets + STRIPE_SIZE * s
    }

    /// Stripe `s`'s lock, which guards the chains of its buckets and its spare.
    fn stripe_lock(&self, s: u64) -> &ShmLock {
        self.span.lock_at(self.stripe_at(s)).expect("lock inside the validated layout")
    }

    /// Stripe `s`'s spare free element (0: none); changed under its lock.
    fn spare(&self, s: u64) -> &AtomicU64 {
        self.span.atomic_u64(self.stripe_at(s) + 8).expect("spare inside the validated layout")
    }

    fn free_list_at(&self, c: u64) -> u64 {
        self.stripe_at(self.stripes()) + FREE_LIST_SIZE * c
    }

    fn free_lock(&self, c: u64) -> &ShmLock {
        self.span.lock_at(self.free_list_at(c)).expect("lock inside the validated layout")
    }

    fn free_head(&self, c: u64) -> &AtomicU64 {
        self.span.atomic_u64(self.free_list_at(c) + 8).expect("head inside the validated layout")
    }

    /// Takes the lock of bucket `b`'s stripe. One taken over from a writer that died is not
    /// used as it is: the map is rebuilt first ([`repair`]).
    fn lock_bucket(&self, b: u64) -> ShmGuard<'_> {
        loop {
            let g = self.stripe_lock(self.stripe_of(b)).lock();
            if !g.recovered() {
                return g;
            }
            // Before anyone else uses the stripe: a replacement the dead writer left half done
            // is finished (the newer element kept), so a later delete removes the key for good.
            self.dedupe_stripe(self.stripe_of(b));
            drop(g);
            // Elements it held and the count it changed: rebuilt with every lock.
            repair(self.map);
        }
    }

    /// Under stripe `s`'s lock: in each of its buckets, unlinks the older elements of a key
    /// that appears twice (the first in the chain is the newest).
    fn dedupe_stripe(&self, s: u64) {
        let ks = self.map.spec().key_size as usize;
        let mut b = s;
        while b < self.nbuckets {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut link = self.bucket(b);
            for _ in 0..=self.pool {
                let cur = link.load(Ordering::Relaxed);
                if cur & 1 != 0 || !self.valid(cur) {
                    break;
                }
                let mut key = vec![0u8; ks];
                self.map.region().read(cur + key_off(self.map), &mut key);
                if self.flags(cur).load(Ordering::Relaxed) & IN_USE != 0 && seen.contains(&key) {
                    link.store(self.next(cur).load(Ordering::Relaxed), Ordering::Release);
                    self.retire(cur);
                    continue;
                }
                seen.push(key);
                link = self.next(cur);
            }
            b += self.stripes();
        }
    }

    /// Whether `e` may be used as an element: inside the pool and 8-aligned. (An offset
    /// into the middle of an element can only come from a scribbled region; it stays in
    /// bounds, which is what memory safety needs, and is cheaper than a division here.)
    fn valid(&self, e: u64) -> bool {
        e >= self.l.data && e.checked_add(self.l.elem_size).is_some_and(|end| end <= self.l.data + self.l.data_len) && e.is_multiple_of(8)
    }

    /// Element `e`'s header (next, hash, flags), where `e` is [`View::valid`].
    #[inline]
    fn header(&self, e: u64) -> Option<Header<'a>> {
        if self.valid(e) {
            self.span.words(e)
        } else {
            None
        }
    }

    fn next(&self, e: u64) -> &'a AtomicU64 {
        self.header(e).expect("valid element").u64_at::<0>()
    }

    fn hash(&self, e: u64) -> &'a AtomicU32 {
        self.header(e).expect("valid element").u32_at::<8>()
    }

    fn flags(&self, e: u64) -> &'a AtomicU32 {
        self.header(e).expect("valid element").u32_at::<12>()
    }

    #[inline]
    fn key_eq(&self, e: u64, key: &[u8]) -> bool {
        let Some(p) = self.span.ptr(e + key_off(self.map), key.len() as u64) else { return false };
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

    /// Element `e`'s index in the pool.
    fn index(&self, e: u64) -> u64 {
        (e - self.l.data) >> self.l.elem_size.trailing_zeros()
    }

    /// Where element `e`'s value (CPU `cpu`'s, in a per-CPU map) is (see [`value_blocks`]).
    #[inline]
    fn value_ptr(&self, e: u64, cpu: u32) -> u64 {
        self.map.value_blocks().value_at(self.index(e), cpu)
    }

    /// Element `e`'s value slot, in maps that are not per-CPU: its region offset, its
    /// retirement count and its value's word.
    fn slot(&self, e: u64) -> (u64, &AtomicU64, &AtomicU64) {
        let slot = self.map.value_blocks().slot_at(self.index(e), 0);
        let word = |at: u64| self.span.atomic_u64(at).expect("slot inside the validated layout");
        (slot, word(slot), word(slot + RETIREMENTS))
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
                let hdr = self.header(cur).filter(|_| steps <= self.pool)?;
                if hdr.u32_at::<8>().load(Ordering::Relaxed) == h && hdr.u32_at::<12>().load(Ordering::Acquire) & IN_USE != 0 && self.key_eq(cur, key) {
                    return Some(cur);
                }
                cur = hdr.u64_at::<0>().load(Ordering::Acquire);
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

    /// Under the bucket's lock: the element holding `key` and the link that points at it.
    fn find_locked(&self, key: &[u8], h: u32) -> Option<(&AtomicU64, u64)> {
        self.find_link(self.bucket_of(h), |cur| {
            self.hash(cur).load(Ordering::Relaxed) == h && self.flags(cur).load(Ordering::Relaxed) & IN_USE != 0 && self.key_eq(cur, key)
        })
    }

    /// Under the lock of `e`'s bucket: takes `e` out of its chain; false if it is not there.
    fn unlink(&self, e: u64) -> bool {
        let b = self.bucket_of(self.hash(e).load(Ordering::Relaxed));
        match self.find_link(b, |cur| cur == e) {
            Some((link, _)) => {
                link.store(self.next(e).load(Ordering::Relaxed), Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Under the lock of `e`'s bucket (or every lock): marks `e`, unlinked, free, and counts
    /// its retirement, which fails in-place writers that looked at it before.
    fn retire(&self, e: u64) {
        self.flags(e).store(0, Ordering::Release);
        if !self.map.map_type().is_percpu() {
            let (_, count, _) = self.slot(e);
            count.store(count.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        }
    }

    /// [`View::retire`] for a deletion that returns the value: the count is bumped by a
    /// compare-and-swap of count and value together, after the element is marked free, so that
    /// an in-place writer either stored before (and its value is the one read after this) or
    /// fails.
    fn retire_for_reading(&self, e: u64) {
        self.flags(e).store(0, Ordering::Release);
        if self.map.map_type().is_percpu() {
            return;
        }
        let (slot, count, word) = self.slot(e);
        loop {
            let (seen, value) = (count.load(Ordering::Acquire), word.load(Ordering::Acquire));
            // (None: no 16-byte swap here, so no writer stores without the lock.)
            if self.span.compare_exchange_pair(slot, [seen, value], [seen.wrapping_add(1), value]) != Some(false) {
                return;
            }
        }
    }

    /// Replaces the value (of 4 or 8 bytes) of `key`'s element without the bucket lock, in a
    /// map that is not per-CPU, so that writers of keys that share a bucket do not wait for
    /// each other (nor touch a line that a chain walk reads): with the element's retirement
    /// count read before it is checked to be live and hold `key`, count and value are replaced
    /// together by a 16-byte compare-and-swap, which fails if the element was freed (and maybe
    /// reused) meanwhile. False when no element holds `key` or the swap kept failing (the
    /// caller then takes the bucket lock). An element unlinked but not yet freed may take the
    /// value: the update then comes before that deletion, which it overlapped.
    fn store_in_place(&self, key: &[u8], h: u32, value: &[u8]) -> bool {
        let Some(e) = self.find(key, h) else { return false };
        let (slot, count, word) = self.slot(e);
        for _ in 0..4 {
            let seen = count.load(Ordering::Acquire);
            let old = word.load(Ordering::Acquire);
            if self.flags(e).load(Ordering::Acquire) & IN_USE == 0 || self.hash(e).load(Ordering::Relaxed) != h || !self.key_eq(e, key) {
                return false;
            }
            #[cfg(test)]
            tests::widen_race_window();
            let new = match *value {
                [a, b, c, d] => old & !0xffff_ffff | u32::from_le_bytes([a, b, c, d]) as u64,
                _ => u64::from_le_bytes(value.try_into().expect("a value of 4 or 8 bytes")),
            };
            match self.span.compare_exchange_pair(slot, [seen, old], [seen, new]) {
                Some(true) => return true,
                Some(false) => continue,
                None => return false,
            }
        }
        false
    }

    /// Free list `c`'s first element, under its lock.
    fn pop_list(&self, c: u64) -> Option<u64> {
        let _g = self.free_lock(c).lock();
        let head = self.free_head(c);
        let e = head.load(Ordering::Relaxed);
        if !self.valid(e) {
            return None;
        }
        head.store(self.next(e).load(Ordering::Relaxed), Ordering::Relaxed);
        Some(e)
    }

    /// Puts `e` on free list `c`, under its lock.
    fn push_list(&self, c: u64, e: u64) {
        let _g = self.free_lock(c).lock();
        let head = self.free_head(c);
        self.next(e).store(head.load(Ordering::Relaxed), Ordering::Release);
        head.store(e, Ordering::Relaxed);
    }

    /// The free list element `i` of the pool starts on (a contiguous run per list).
    fn list_of(&self, i: u64) -> u64 {
        (i * FREE_LISTS / self.pool.max(1)).min(FREE_LISTS - 1)
    }

    /// This CPU's free list.
    fn my_list(&self) -> u64 {
        current_cpu() as u64 & (FREE_LISTS - 1)
    }

    /// Under bucket `b`'s lock: a free element: its stripe's spare, else one from the free
    /// lists (this CPU's first), else another stripe's spare (of a stripe not locked now).
    fn take_free(&self, b: u64) -> Option<u64> {
        let mine = self.stripe_of(b);
        let spare = self.spare(mine).load(Ordering::Relaxed);
        if spare != 0 && self.valid(spare) {
            self.spare(mine).store(0, Ordering::Relaxed);
            return Some(spare);
        }
        let me = self.my_list();
        let nonempty = |c: u64| self.valid(self.free_head(c).load(Ordering::Relaxed));
        if let Some(e) = (0..FREE_LISTS).map(|k| (me + k) & (FREE_LISTS - 1)).filter(|&c| nonempty(c)).find_map(|c| self.pop_list(c)) {
            return Some(e);
        }
        (0..self.stripes()).filter(|&o| o != mine).find_map(|o| {
            let _g = self.stripe_lock(o).try_lock()?;
            let e = self.spare(o).load(Ordering::Relaxed);
            (e != 0 && self.valid(e)).then(|| {
                self.spare(o).store(0, Ordering::Relaxed);
                e
            })
        })
    }

    /// [`View::take_free`], for an insert that took an entry of the budget (`budgeted`; not in
    /// an LRU map, which evicts instead): a free element exists then, but may be another
    /// stripe's spare whose lock a thread holds for a moment (an insert or delete of its own,
    /// preempted on a busy machine): looked for again, a while, rather than failing with E2BIG
    /// in a map that is not full.
    fn take_free_for(&self, b: u64, budgeted: bool) -> Option<u64> {
        let tries = if budgeted { 1000 } else { 1 };
        for i in 0..tries {
            if let Some(e) = self.take_free(b) {
                return Some(e);
            }
            if i + 1 < tries {
                std::thread::yield_now();
            }
        }
        None
    }

    /// Under bucket `b`'s lock: frees `e` (already unlinked).
    fn release(&self, b: u64, e: u64) {
        self.retire(e);
        self.recycle(b, e);
    }

    /// Under bucket `b`'s lock: makes `e` (unlinked and retired) a free element: its stripe's
    /// spare when it has none, else one on this CPU's free list.
    fn recycle(&self, b: u64, e: u64) {
        let s = self.stripe_of(b);
        if self.spare(s).load(Ordering::Relaxed) == 0 {
            self.spare(s).store(e, Ordering::Relaxed);
        } else {
            self.push_list(self.my_list(), e);
        }
    }

    /// CLOCK eviction, under bucket `b`'s lock: unlinks one element (of bucket `b` or of a
    /// bucket whose lock is free) and returns it; None if none could be found.
    fn evict(&self, b: u64) -> Option<u64> {
        let d = self.map.desc();
        for _ in 0..2 * self.pool {
            let i = d.hand.fetch_add(1, Ordering::Relaxed) % self.pool;
            let e = self.elem_at(i);
            let f = self.flags(e).load(Ordering::Acquire);
            if f & IN_USE == 0 {
                continue;
            }
            if f & REFERENCED != 0 {
                self.flags(e).fetch_and(!REFERENCED, Ordering::Relaxed);
                continue;
            }
            let home = self.bucket_of(self.hash(e).load(Ordering::Relaxed));
            let _g = if self.stripe_of(home) == self.stripe_of(b) {
                None
            } else {
                match self.stripe_lock(self.stripe_of(home)).try_lock() {
                    Some(g) => Some(g),
                    None => continue,
                }
            };
            // Still in use and in that bucket's chain, now that its lock is held?
            if self.flags(e).load(Ordering::Acquire) & IN_USE == 0 || self.bucket_of(self.hash(e).load(Ordering::Relaxed)) != home || !self.unlink(e) {
                continue;
            }
            self.retire(e);
            return Some(e);
        }
        None
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
    for s in 0..v.stripes() {
        v.spare(s).store(0, Ordering::Relaxed);
    }
    for c in 0..FREE_LISTS {
        v.free_head(c).store(FREE_END, Ordering::Relaxed);
    }
    // Each list a contiguous run of the pool, as the kernel's per-CPU free lists are: writers
    // on different CPUs then write different cache lines.
    for i in (0..v.pool).rev() {
        v.flags(v.elem_at(i)).store(0, Ordering::Relaxed);
        v.push_list(v.list_of(i), v.elem_at(i));
    }
    map.reset_entries(0);
}

/// After a writer died holding a lock: with the map's lock and then every bucket and free list
/// lock held (others wait), unlink duplicates, and rebuild the free lists and the count from
/// what the buckets reach.
pub(crate) fn repair(map: &Map) {
    let v = View::new(map);
    // Repairs one at a time: a repairer waits for this holding nothing.
    let whole = map.desc().lock.lock();
    let stripes: Vec<ShmGuard> = (0..v.stripes()).map(|s| v.stripe_lock(s).lock()).collect();
    let lists: Vec<ShmGuard> = (0..FREE_LISTS).map(|c| v.free_lock(c).lock()).collect();
    // A large map takes a while: the locks say their holder is alive, so that waiters do not
    // take them over as stuck.
    let beat = |i: u64| {
        if i.is_multiple_of(4096) {
            whole.touch();
            stripes.iter().chain(&lists).for_each(ShmGuard::touch);
        }
    };
    let mut reached = vec![false; v.pool as usize];
    let mut count = 0;
    let ks = map.spec().key_size as usize;
    for b in 0..v.nbuckets {
        beat(b);
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
    for s in 0..v.stripes() {
        v.spare(s).store(0, Ordering::Relaxed);
    }
    // The free lists are rebuilt by hand: their locks are held here.
    for c in 0..FREE_LISTS {
        v.free_head(c).store(FREE_END, Ordering::Relaxed);
    }
    for i in (0..v.pool).rev() {
        beat(i);
        if !reached[i as usize] {
            let (e, head) = (v.elem_at(i), v.free_head(v.list_of(i)));
            v.retire(e);
            v.next(e).store(head.load(Ordering::Relaxed), Ordering::Release);
            head.store(e, Ordering::Relaxed);
        }
    }
    map.reset_entries(count);
}

/// Replaces a value of 4 or 8 bytes by one atomic store (its slot is 8 aligned bytes; readers
/// load such values whole): readers see the old value or the new one, as they would with a new
/// element, and the chain, bucket and pool stay untouched.
fn store_word(map: &Map, at: u64, value: &[u8]) {
    let r = map.region();
    match *value {
        [a, b, c, d] => r.atomic_u32(at).expect("value slot inside the validated layout").store(u32::from_le_bytes([a, b, c, d]), Ordering::Release),
        _ => {
            let word = u64::from_le_bytes(value.try_into().expect("a value of 4 or 8 bytes"));
            r.atomic_u64(at).expect("value slot inside the validated layout").store(word, Ordering::Release);
        }
    }
}

fn copy_value_out(map: &Map, v: &View, e: u64, out: &mut [u8]) {
    let r = map.region();
    if map.map_type().is_percpu() {
        let stride = round8(map.spec().value_size as u64) as usize;
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

/// The address of `key`'s value in CPU `cpu`'s slot (`cpu` below the map's CPU count; 0 for
/// a map that is not per-CPU).
#[inline]
pub(crate) fn lookup_ptr_on(map: &Map, key: &[u8], cpu: u32) -> Option<*mut u8> {
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
    v.span.ptr(v.value_ptr(e, cpu), map.spec().value_size as u64)
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
            let stride = round8(map.spec().value_size as u64) as usize;
            for cpu in 0..map.ncpus() {
                r.write(v.value_ptr(e, cpu), &value[cpu as usize * stride..][..vs]);
            }
        }
        Fill::All(value) => {
            r.write(v.value_ptr(e, 0), value);
        }
        Fill::ThisCpu(value) => {
            // (The caller checked that the map has a value for this CPU.) Other CPUs' values
            // are touched only for a new element, which starts at zero on every CPU.
            let me = current_cpu();
            r.write(v.value_ptr(e, me), value);
            for cpu in (0..map.ncpus()).filter(|&c| fresh && c != me) {
                r.zero(v.value_ptr(e, cpu), vs as u64);
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
    let one_word = match fill {
        Fill::All(value) if !map.map_type().is_percpu() && matches!(value.len(), 4 | 8) => Some(value),
        _ => None,
    };
    if let Some(value) = one_word.filter(|_| flags != BPF_NOEXIST) {
        if v.store_in_place(key, h, value) {
            return Ok(());
        }
    }
    let b = v.bucket_of(h);
    let _g = v.lock_bucket(b);
    let found = v.find_locked(key, h);
    let old = found.map(|(_, e)| e);
    if old.is_some() && flags == BPF_NOEXIST {
        return Err(Errno::EEXIST);
    }
    if old.is_none() && flags == BPF_EXIST {
        return Err(Errno::ENOENT);
    }
    if let (Some(e), true) = (old, map.map_type().is_percpu()) {
        // Per-CPU maps update in place, as the kernel does.
        write_value(map, &v, e, &fill, false);
        return Ok(());
    }
    if let (Some(e), Some(value)) = (old, one_word) {
        store_word(map, v.value_ptr(e, 0), value);
        return Ok(());
    }
    // A new key takes its entry of the budget first, so that racing inserts never pass
    // max_entries; in a full LRU map it takes the entry of the key it evicts.
    let mut evicted = None;
    if old.is_none() && !map.take_entry() {
        evicted = if v.is_lru() { v.evict(b) } else { None };
        if evicted.is_none() {
            return Err(Errno::E2BIG);
        }
    }
    let e = match evicted.or_else(|| v.take_free_for(b, old.is_none() && !v.is_lru())) {
        Some(e) => e,
        None => match if v.is_lru() { v.evict(b) } else { None } {
            // Evicted to make room for its own replacement: the key stays, and so does its
            // entry.
            Some(e) if old == Some(e) => e,
            // Another key evicted for want of a free element: its entry goes back.
            Some(e) => {
                map.give_entry();
                e
            }
            None => {
                if old.is_none() {
                    map.give_entry();
                }
                return Err(Errno::E2BIG);
            }
        },
    };
    v.hash(e).store(h, Ordering::Relaxed);
    map.region().write(e + key_off(map), key);
    write_value(map, &v, e, &fill, true);
    v.flags(e).store(IN_USE, Ordering::Release);
    let bucket = v.bucket(b);
    // An eviction (LRU maps) may have changed this bucket's chain: the old element's link again.
    let found = if v.is_lru() { found.and_then(|(_, o)| v.find_link(b, |cur| cur == o)) } else { found };
    let head = bucket.load(Ordering::Relaxed);
    v.next(e).store(head, Ordering::Relaxed);
    bucket.store(e, Ordering::Release);
    if let Some((link, o)) = found {
        // The old element's link: the new element's `next` if it was first in the chain.
        let link = if std::ptr::eq(link, bucket) { v.next(e) } else { link };
        link.store(v.next(o).load(Ordering::Relaxed), Ordering::Release);
        v.release(b, o);
    }
    Ok(())
}

pub(crate) fn update(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    update_with(map, key, Fill::All(value), flags)
}

pub(crate) fn update_percpu_one(map: &Map, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    if key.len() != map.spec().key_size as usize || value.len() != map.spec().value_size as usize || current_cpu() >= map.ncpus() {
        return Err(Errno::EINVAL);
    }
    update_with(map, key, Fill::ThisCpu(value), flags)
}

pub(crate) fn delete(map: &Map, key: &[u8]) -> Result<(), Errno> {
    remove(map, key, None)
}

pub(crate) fn lookup_and_delete(map: &Map, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    remove(map, key, Some(value))
}

/// Deletes `key`, copying its value out first when asked.
fn remove(map: &Map, key: &[u8], value: Option<&mut [u8]>) -> Result<(), Errno> {
    let v = View::new(map);
    let h = hash_bytes(key, 0);
    let b = v.bucket_of(h);
    let _g = v.lock_bucket(b);
    let (link, e) = v.find_locked(key, h).ok_or(Errno::ENOENT)?;
    link.store(v.next(e).load(Ordering::Relaxed), Ordering::Release);
    match value {
        Some(out) => {
            // The value returned is the last: no in-place writer stores after this.
            v.retire_for_reading(e);
            copy_value_out(map, &v, e, out);
        }
        None => v.retire(e),
    }
    v.recycle(b, e);
    map.give_entry();
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

/// `bpf_for_each_map_elem` over a hash map: `f(key address, value address)` (in this process)
/// for each live element, bucket by bucket, CPU `cpu`'s value for a per-CPU map, until `f`
/// returns true; how many elements `f` saw. Elements are noted a batch at a time before `f`
/// sees them, so `f` may delete or add elements (one deleted meanwhile is skipped); the batch
/// lives on the stack, as this may run in a signal handler that interrupted an allocation.
pub(crate) fn for_each(map: &Map, cpu: u32, f: &mut dyn FnMut(u64, u64) -> bool) -> u64 {
    const BATCH: usize = 16;
    let v = View::new(map);
    let mut seen = 0;
    for b in 0..v.nbuckets {
        let mut cur = first_live(&v, v.bucket(b).load(Ordering::Acquire));
        let mut steps = 0;
        while cur.is_some() && steps <= v.pool {
            let mut batch = [0u64; BATCH];
            let mut n = 0;
            while let Some(e) = cur.filter(|_| n < BATCH && steps <= v.pool) {
                batch[n] = e;
                n += 1;
                steps += 1;
                cur = first_live(&v, v.next(e).load(Ordering::Acquire));
            }
            for &e in &batch[..n] {
                if v.flags(e).load(Ordering::Acquire) & IN_USE == 0 {
                    continue;
                }
                let key = map.region().ptr(e + key_off(map), map.spec().key_size as u64);
                let value = map.region().ptr(v.value_ptr(e, cpu), map.spec().value_size as u64);
                let (Some(key), Some(value)) = (key, value) else { continue };
                seen += 1;
                if f(key as u64, value as u64) {
                    return seen;
                }
            }
        }
    }
    seen
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

    /// The short keys' own path hashes as the general one does (processes of other builds may
    /// share a map), for keys and seeds across the range.
    #[test]
    fn short_keys_hash_as_any_key_does() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let seed = if i % 2 == 0 { 0 } else { x.rotate_left(17) };
            for key in [&x.to_le_bytes()[..4], &x.to_le_bytes()[..]] {
                assert_eq!(hash_bytes(key, seed), hash_any(key, hash_start(key, seed)), "{key:?} seed {seed:#x}");
            }
        }
    }

    std::thread_local! {
        /// Spins between an in-place writer's checks and its store, on threads that set it.
        static RACE_WINDOW: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Sets its flag when dropped: stops a helper thread however the checking thread's loop
    /// ends (a failed check included), so that a failure is reported rather than a hang.
    struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Makes the gap between an in-place writer's checks and its store long on this thread.
    pub(super) fn widen_race_window() {
        for _ in 0..RACE_WINDOW.get() {
            std::hint::spin_loop();
        }
    }

    /// Writers on several threads (inserts, replacements, deletions, LRU evictions, on
    /// overlapping keys) leave a whole map: the count equals the keys reachable, no key twice,
    /// never more than max_entries, and no element lost (the map fills to max_entries again).
    #[test]
    fn concurrent_writers_keep_the_map_whole() {
        for (t, value_size) in [(MapType::Hash, 8), (MapType::Hash, 24), (MapType::LruHash, 8), (MapType::LruHash, 24), (MapType::PercpuHash, 8)] {
            let region = Arc::new(bpftime_shm::ShmRegion::anonymous(8 << 20).unwrap());
            let map = Arc::new(Map::create(&region, "h", &MapSpec::new(t, 4, value_size, 64)).unwrap());
            let vs = map.syscall_value_size();
            std::thread::scope(|s| {
                for w in 0..4u32 {
                    let map = map.clone();
                    s.spawn(move || {
                        let mut x = w.wrapping_mul(2654435761).wrapping_add(1);
                        for i in 0..20_000u32 {
                            x ^= x << 13;
                            x ^= x >> 17;
                            x ^= x << 5;
                            let key = (x % 96).to_le_bytes();
                            match i % 4 {
                                0 => {
                                    let _ = map.delete(&key);
                                }
                                _ => {
                                    let r = map.update(&key, &vec![w as u8; vs], 0);
                                    assert!(matches!(r, Ok(()) | Err(Errno::E2BIG)), "{t:?}: {r:?}");
                                }
                            }
                            assert!(map.len() <= 64 + 4, "{t:?}: count {}", map.len());
                        }
                    });
                }
            });
            let keys = map.keys();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), keys.len(), "{t:?}: a key twice");
            assert_eq!(map.len(), keys.len() as u64, "{t:?}: count vs reachable keys");
            assert!(keys.len() <= 64, "{t:?}");
            for k in &keys {
                map.delete(k).unwrap();
            }
            for k in 0..64u32 {
                map.update(&k.to_le_bytes(), &vec![1; vs], 0).unwrap_or_else(|e| panic!("{t:?}: element {k} lost: {e:?}"));
            }
            if t != MapType::LruHash {
                assert_eq!(map.update(&64u32.to_le_bytes(), &vec![1; vs], 0), Err(Errno::E2BIG), "{t:?}");
            }
            assert_eq!(map.len(), 64);
        }
    }

    /// Readers never see a value half replaced, whatever its size (one writer swapping two
    /// uniform values, one reader checking that each read is uniform).
    #[test]
    fn readers_never_see_torn_values() {
        for value_size in [3u32, 4, 6, 8, 12] {
            let region = Arc::new(bpftime_shm::ShmRegion::anonymous(1 << 20).unwrap());
            let map = Arc::new(Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, value_size, 8)).unwrap());
            let key = 1u32.to_le_bytes();
            map.update(&key, &vec![0; value_size as usize], 0).unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            std::thread::scope(|s| {
                let (m, st) = (map.clone(), stop.clone());
                s.spawn(move || {
                    for i in 0..200_000u32 {
                        let fill = if i % 2 == 0 { 0xff } else { 0 };
                        m.update(&key, &vec![fill; value_size as usize], 0).unwrap();
                    }
                    st.store(true, Ordering::Relaxed);
                });
                let mut v = vec![0u8; value_size as usize];
                while !stop.load(Ordering::Relaxed) {
                    if map.lookup(&key, &mut v).is_ok() {
                        assert!(v.iter().all(|&b| b == v[0]), "value_size {value_size}: torn read {v:?}");
                    }
                }
            });
        }
    }

    /// An update of an existing key stores without the bucket lock; one racing a deletion of
    /// that key never lands in the element once it is reused for another key (here: keys of
    /// the same bucket, which reuse the freed element at once), for values of 4 and 8 bytes.
    #[test]
    fn an_update_racing_a_deletion_never_writes_another_keys_value() {
        for value_size in [4u32, 8] {
            let region = Arc::new(bpftime_shm::ShmRegion::anonymous(1 << 20).unwrap());
            let map = Arc::new(Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, value_size, 4)).unwrap());
            let bucket = |k: u32| hash_bytes(&k.to_le_bytes(), 0) & 3;
            let others: Vec<u32> = (1..).filter(|&k| bucket(k) == bucket(0)).take(3).collect();
            let tagged = |k: u32, i: u32| ((k << 24 | i & 0xff_ffff) as u64).to_le_bytes()[..value_size as usize].to_vec();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            std::thread::scope(|s| {
                let (m, st) = (map.clone(), stop.clone());
                let _stop = StopOnDrop(stop.clone());
                s.spawn(move || {
                    RACE_WINDOW.set(500);
                    let mut i = 0;
                    while !st.load(Ordering::Relaxed) {
                        let _ = m.update(&0u32.to_le_bytes(), &tagged(0, i), 0);
                        i += 1;
                    }
                });
                let mut v = vec![0u8; value_size as usize];
                for i in 0..100_000u32 {
                    let _ = map.delete(&0u32.to_le_bytes());
                    let k = others[i as usize % others.len()];
                    map.update(&k.to_le_bytes(), &tagged(k, i), 0).unwrap();
                    std::hint::spin_loop();
                    map.lookup(&k.to_le_bytes(), &mut v).unwrap();
                    assert_eq!(v, tagged(k, i), "value_size {value_size}: key {k} took another key's value");
                    map.delete(&k.to_le_bytes()).unwrap();
                }
            });
        }
    }

    /// `lookup_and_delete` racing an update of the same key returns the updated value or leaves
    /// the update failing (the key gone), never takes the old value while the update succeeds.
    #[test]
    fn an_update_racing_a_lookup_and_delete_is_never_lost() {
        use std::sync::atomic::AtomicU64;
        let region = Arc::new(bpftime_shm::ShmRegion::anonymous(1 << 20).unwrap());
        let map = Arc::new(Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, 8, 4)).unwrap());
        let key = 7u32.to_le_bytes();
        // Round r: the deleter sets `go` to r; the writer answers in `done` with r << 1 | ok.
        let (go, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        const ROUNDS: u64 = 50_000;
        std::thread::scope(|s| {
            let _stop = StopOnDrop(stop.clone());
            let (m, go_w, done_w) = (map.clone(), go.clone(), done.clone());
            s.spawn(move || {
                let (go, done) = (go_w, done_w);
                RACE_WINDOW.set(200);
                for r in 1..=ROUNDS {
                    while go.load(Ordering::Acquire) != r {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::hint::spin_loop();
                    }
                    let ok = m.update(&key, &1u64.to_le_bytes(), BPF_EXIST).is_ok();
                    done.store(r << 1 | ok as u64, Ordering::Release);
                }
            });
            let mut out = [0u8; 8];
            for r in 1..=ROUNDS {
                map.update(&key, &0u64.to_le_bytes(), BPF_NOEXIST).unwrap();
                go.store(r, Ordering::Release);
                for _ in 0..r % 300 {
                    std::hint::spin_loop();
                }
                map.lookup_and_delete(&key, &mut out).unwrap();
                let answer = loop {
                    let d = done.load(Ordering::Acquire);
                    if d >> 1 == r {
                        break d;
                    }
                    std::hint::spin_loop();
                };
                let updated = answer & 1 == 1;
                assert!(!updated || u64::from_le_bytes(out) == 1, "round {r}: the update succeeded but lookup_and_delete returned the old value");
                let _ = map.delete(&key);
            }
        });
    }

    /// A writer that died holding a bucket lock, after taking two elements off a free list and
    /// linking a replacement for key 1 without unlinking the old element: the next writer of
    /// that bucket takes the lock over, repairs the map, and the map is whole again.
    #[test]
    fn repair_after_a_writer_died_mid_update() {
        let region = Arc::new(bpftime_shm::ShmRegion::anonymous(1 << 20).unwrap());
        let map = Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, 8, 4)).unwrap();
        map.update(&1u32.to_le_bytes(), &10u64.to_le_bytes(), 0).unwrap();
        map.update(&2u32.to_le_bytes(), &20u64.to_le_bytes(), 0).unwrap();
        let v = View::new(&map);
        let any = || (0..FREE_LISTS).find_map(|c| v.pop_list(c)).unwrap();
        let _leaked = any();
        let dup = any();
        let h = hash_bytes(&1u32.to_le_bytes(), 0);
        v.hash(dup).store(h, Ordering::Relaxed);
        map.region().write(dup + key_off(&map), &1u32.to_le_bytes());
        map.region().write(v.value_ptr(dup, 0), &11u64.to_le_bytes());
        v.flags(dup).store(IN_USE, Ordering::Release);
        let bucket = v.bucket(h as u64 & (v.nbuckets - 1));
        v.next(dup).store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket.store(dup, Ordering::Release);
        // It died holding the lock of key 3's bucket (a pid that cannot exist).
        v.stripe_lock(v.stripe_of(v.bucket_of(hash_bytes(&3u32.to_le_bytes(), 0)))).force_holder(0x3fff_fff0);
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
