//! RINGBUF with the kernel's memory layout, so that a consumer written for the kernel
//! (libbpf's `ring_buffer`) can read it: a consumer page holding `consumer_pos`, a producer
//! page holding `producer_pos`, then the data pages. Each record starts with an 8-byte header
//! (`len` with the BUSY and DISCARD bits, `pg_off`), is 8-byte aligned, and is readable once
//! BUSY is cleared.
//!
//! One difference: a record never wraps around the end of the data area (a discarded padding
//! record fills the gap instead), so a consumer needs no double mapping of the data pages.
//!
//! The rest of the consumer page (which libbpf maps but never reads beyond `consumer_pos`)
//! holds a magic number and the data size, written when the ring is made, so that
//! `bpf_ringbuf_submit` can find the ring from a record address alone, as the kernel does with
//! `pg_off`.

use crate::{Errno, Layout, Map, MapSpec};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

/// Record header size.
pub const RINGBUF_HDR_SZ: u64 = 8;
/// Set in `len` while the record is being written.
pub const RINGBUF_BUSY_BIT: u32 = 1 << 31;
/// Set in `len` when the record was discarded.
pub const RINGBUF_DISCARD_BIT: u32 = 1 << 30;
const PAGE: u64 = 4096;
const RB_MAGIC: u64 = 0x7262_7566_6d61_6731; // "rbufmag1"

/// A record as a consumer sees it.
#[derive(Debug, Clone, Copy)]
pub struct RingbufRecord<'a> {
    /// The bytes of the record.
    pub data: &'a [u8],
}

/// The layout's sizes (offsets 0): two pages of positions, then the data.
pub(crate) fn sizes(spec: &MapSpec) -> Option<Layout> {
    Some(Layout { data_len: spec.max_entries as u64, aux_len: 2 * PAGE, ..Layout::default() })
}

/// Whether a layout read from the region has the ring's shape: positions page-aligned, the data
/// right after them.
pub(crate) fn shape_ok(l: &Layout) -> bool {
    l.aux.is_multiple_of(PAGE) && l.data == l.aux + 2 * PAGE && l.data_len.is_power_of_two()
}

pub(crate) fn alloc(region: &ShmRegion, spec: &MapSpec) -> Result<Layout, ShmError> {
    let size = spec.max_entries as u64;
    let base = region.alloc_pages(2 * PAGE + size)?;
    // Identify the ring for `commit`.
    if let (Some(m), Some(d)) = (region.atomic_u64(base + 8), region.atomic_u64(base + 16)) {
        d.store(size, Ordering::Relaxed);
        m.store(RB_MAGIC, Ordering::Release);
    }
    Ok(Layout { data: base + 2 * PAGE, data_len: size, aux: base, aux_len: 2 * PAGE, elem_size: 0, elem_count: 0 })
}

struct Ring<'a> {
    map: &'a Map,
    base: u64,
    data: u64,
    size: u64,
}

impl<'a> Ring<'a> {
    fn new(map: &'a Map) -> Self {
        let l = map.layout();
        Ring { map, base: l.aux, data: l.data, size: l.data_len }
    }

    fn consumer(&self) -> &std::sync::atomic::AtomicU64 {
        self.map.region().atomic_u64(self.base).expect("validated layout")
    }

    fn producer(&self) -> &std::sync::atomic::AtomicU64 {
        self.map.region().atomic_u64(self.base + PAGE).expect("validated layout")
    }
}

pub(crate) fn reserve(map: &Map, size: u64) -> Option<*mut u8> {
    let rb = Ring::new(map);
    // (A record of no bytes is a header alone, as in the kernel.)
    if size > rb.size - RINGBUF_HDR_SZ || size > (RINGBUF_DISCARD_BIT - 1) as u64 {
        return None;
    }
    let len = (size + RINGBUF_HDR_SZ).div_ceil(8) * 8;
    let r = map.region();
    let _g = map.write_lock();
    let cons = rb.consumer().load(Ordering::Acquire);
    let prod = rb.producer().load(Ordering::Relaxed);
    let pos = prod & (rb.size - 1);
    let pad = if pos + len > rb.size { rb.size - pos } else { 0 };
    // Positions live in shared pages (wrapping, as the kernel's): a consumer position ahead of
    // the producer can only come from a scribble and reads as a full ring.
    if prod.wrapping_add(pad + len).wrapping_sub(cons) > rb.size {
        map.desc().lost.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if pad > 0 {
        let hdr = r.atomic_u64(rb.data + pos)?;
        let pg_off = ((rb.data + pos) / PAGE - rb.base / PAGE) as u32;
        hdr.store(((pad - RINGBUF_HDR_SZ) as u32 | RINGBUF_DISCARD_BIT) as u64 | (pg_off as u64) << 32, Ordering::Release);
    }
    let at = rb.data + (prod.wrapping_add(pad) & (rb.size - 1));
    let pg_off = (at / PAGE - rb.base / PAGE) as u32;
    r.atomic_u64(at)?.store((size as u32 | RINGBUF_BUSY_BIT) as u64 | (pg_off as u64) << 32, Ordering::Release);
    rb.producer().store(prod.wrapping_add(pad + len), Ordering::Release);
    r.ptr(at + RINGBUF_HDR_SZ, size)
}

/// Finds the ring of a reserved record from its address and commits or discards it.
pub(crate) fn commit(region: &ShmRegion, sample: u64, discard: bool) -> bool {
    let Some(hdr_off) = region.offset_of(sample).and_then(|o| o.checked_sub(RINGBUF_HDR_SZ)) else { return false };
    let Some(hdr) = region.atomic_u64(hdr_off) else { return false };
    let word = hdr.load(Ordering::Acquire);
    let len = word as u32;
    let pg_off = word >> 32;
    if len & RINGBUF_BUSY_BIT == 0 {
        return false;
    }
    let Some(base) = (hdr_off / PAGE).checked_sub(pg_off).map(|p| p * PAGE) else { return false };
    let (Some(magic), Some(size)) = (region.atomic_u64(base + 8), region.atomic_u64(base + 16)) else { return false };
    let size = size.load(Ordering::Relaxed);
    let data = base + 2 * PAGE;
    if magic.load(Ordering::Acquire) != RB_MAGIC || hdr_off < data || data.checked_add(size).is_none_or(|end| hdr_off >= end) {
        return false;
    }
    let new = (len & !RINGBUF_BUSY_BIT) | if discard { RINGBUF_DISCARD_BIT } else { 0 };
    hdr.store(new as u64 | pg_off << 32, Ordering::Release);
    region.records_published();
    true
}

pub(crate) fn output(map: &Map, data: &[u8]) -> Result<(), Errno> {
    let p = reserve(map, data.len() as u64).ok_or(Errno::EAGAIN)?;
    // SAFETY: `reserve` returned `data.len()` bytes inside the region, ours until committed.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    commit(map.region(), p as u64, false);
    Ok(())
}

/// `bpf_ringbuf_query` flags.
pub(crate) fn query(map: &Map, what: u64) -> u64 {
    let rb = Ring::new(map);
    let cons = rb.consumer().load(Ordering::Acquire);
    let prod = rb.producer().load(Ordering::Acquire);
    match what {
        0 => prod.wrapping_sub(cons), // BPF_RB_AVAIL_DATA
        1 => rb.size,                 // BPF_RB_RING_SIZE
        2 => cons,                    // BPF_RB_CONS_POS
        3 => prod,                    // BPF_RB_PROD_POS
        _ => 0,
    }
}

pub(crate) fn consume(map: &Map, f: &mut dyn FnMut(&[u8])) -> usize {
    let rb = Ring::new(map);
    let r = map.region();
    let mut n = 0;
    let mut cons = rb.consumer().load(Ordering::Relaxed);
    loop {
        let prod = rb.producer().load(Ordering::Acquire);
        let waiting = prod.wrapping_sub(cons);
        if waiting == 0 || waiting > rb.size {
            // Nothing to read, or positions that no producer makes (a scribble): skip to the
            // producer instead of reading garbage or looping for ever.
            if waiting != 0 {
                rb.consumer().store(prod, Ordering::Release);
            }
            break;
        }
        let at = rb.data + (cons & (rb.size - 1));
        let Some(hdr) = r.atomic_u64(at) else { break };
        let len = hdr.load(Ordering::Acquire) as u32;
        if len & RINGBUF_BUSY_BIT != 0 {
            break;
        }
        let size = (len & !RINGBUF_DISCARD_BIT) as u64;
        if size + RINGBUF_HDR_SZ > waiting {
            rb.consumer().store(prod, Ordering::Release);
            break;
        }
        if len & RINGBUF_DISCARD_BIT == 0 {
            let mut buf = vec![0u8; size as usize];
            r.read(at + RINGBUF_HDR_SZ, &mut buf);
            f(&buf);
            n += 1;
        }
        cons = cons.wrapping_add((size + RINGBUF_HDR_SZ).div_ceil(8) * 8);
        rb.consumer().store(cons, Ordering::Release);
    }
    n
}
