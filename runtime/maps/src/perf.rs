//! PERF_EVENT_ARRAY: one perf ring per CPU, records in the kernel's `PERF_RECORD_SAMPLE`
//! format (`struct perf_event_header`, then a u32 size and the raw bytes, padded to 8).
//! Each ring has a header page with `data_head`, `data_tail` and `data_size` where
//! `perf_event_mmap_page` keeps them (offsets 1024, 1032, 1048), followed by its data pages.
//! A consumer that maps a ring chooses its size, as with the kernel (`perf_buffer__new`'s page
//! count, a power of two up to [`MAX_RING_PAGES`]): `set_ring_size` writes it into `data_size`
//! and the producer wraps there; 16 pages until then.
//!
//! As the kernel's: a sample that does not fit is lost and counted, and the next sample that
//! fits is preceded by a `PERF_RECORD_LOST` record with the count (libbpf calls the buffer's
//! lost callback with it). The count waits in the ring's header page, past the fields a
//! consumer reads.

use crate::{Errno, Layout, Map, MapSpec};
use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

const PAGE: u64 = 4096;
/// Most data pages a CPU's ring can have (bpftrace asks for 64).
pub const MAX_RING_PAGES: u64 = 64;
/// Data bytes reserved per CPU ring.
const RING_MAX: u64 = MAX_RING_PAGES * PAGE;
/// Data bytes of a ring whose consumer did not say (16 pages, libbpf-tools' usual).
const RING_DEFAULT: u64 = 16 * PAGE;
const DATA_SIZE: u64 = 1048;
const PERF_RECORD_SAMPLE: u32 = 9;
const PERF_RECORD_LOST: u32 = 2;
/// Bytes of a `PERF_RECORD_LOST` record: header, id, count.
const LOST_RECORD: u64 = 24;
const HEAD: u64 = 1024;
const TAIL: u64 = 1032;
/// Samples lost since the last `PERF_RECORD_LOST` record (u64, in the header page).
const LOST_PENDING: u64 = 2048;

/// A sample as a consumer sees it.
#[derive(Debug, Clone, Copy)]
pub struct PerfRecord<'a> {
    /// CPU ring it came from.
    pub cpu: u32,
    /// Raw sample bytes.
    pub data: &'a [u8],
}

/// The layout's sizes (offsets 0): a page of counters and a ring per CPU.
pub(crate) fn sizes(cpus: u64) -> Option<Layout> {
    let per = PAGE + RING_MAX;
    Some(Layout { data_len: per.checked_mul(cpus)?, elem_size: per, ..Layout::default() })
}

pub(crate) fn alloc(region: &ShmRegion, _spec: &MapSpec, cpus: u64) -> Result<Layout, ShmError> {
    let l = sizes(cpus).ok_or(ShmError::TooSmall(0))?;
    Ok(Layout { data: region.alloc_pages(l.data_len)?, ..l })
}

fn ring_base(map: &Map, cpu: u32) -> u64 {
    map.layout().data + cpu as u64 * map.layout().elem_size
}

/// The data size of the ring at `base`: what its consumer chose, else the default.
fn ring_size(map: &Map, base: u64) -> u64 {
    let n = map.region().atomic_u64(base + DATA_SIZE).map_or(0, |a| a.load(Ordering::Acquire));
    if n.is_power_of_two() && (PAGE..=RING_MAX).contains(&n) {
        n
    } else {
        RING_DEFAULT
    }
}

/// Sets the data size of ring `cpu` (a power of two, one page to [`MAX_RING_PAGES`]), as a
/// consumer mapping it does; positions restart at 0.
pub fn set_ring_size(map: &Map, cpu: u32, bytes: u64) -> Result<(), Errno> {
    if cpu >= map.ncpus() || !bytes.is_power_of_two() || !(PAGE..=RING_MAX).contains(&bytes) {
        return Err(Errno::EINVAL);
    }
    let base = ring_base(map, cpu);
    let r = map.region();
    let _g = map.write_lock();
    for (off, v) in [(HEAD, 0), (TAIL, 0), (DATA_SIZE, bytes), (LOST_PENDING, 0)] {
        r.atomic_u64(base + off).ok_or(Errno::EFAULT)?.store(v, Ordering::Release);
    }
    Ok(())
}

fn write_wrapped(map: &Map, base: u64, pos: u64, bytes: &[u8]) {
    let r = map.region();
    let ring = ring_size(map, base);
    let start = pos % ring;
    let first = (ring - start).min(bytes.len() as u64) as usize;
    r.write(base + PAGE + start, &bytes[..first]);
    if first < bytes.len() {
        r.write(base + PAGE, &bytes[first..]);
    }
}

fn read_wrapped(map: &Map, base: u64, pos: u64, out: &mut [u8]) {
    let r = map.region();
    let ring = ring_size(map, base);
    let start = pos % ring;
    let first = (ring - start).min(out.len() as u64) as usize;
    r.read(base + PAGE + start, &mut out[..first]);
    if first < out.len() {
        r.read(base + PAGE, &mut out[first..]);
    }
}

pub(crate) fn output(map: &Map, cpu: u32, data: &[u8]) -> Result<(), Errno> {
    if cpu >= map.ncpus() {
        return Err(Errno::E2BIG);
    }
    let size = (8 + 4 + data.len() as u64).div_ceil(8) * 8;
    let base = ring_base(map, cpu);
    let ring = ring_size(map, base);
    if size > u16::MAX as u64 || size > ring {
        return Err(Errno::E2BIG);
    }
    let r = map.region();
    let (head, tail) = (r.atomic_u64(base + HEAD).ok_or(Errno::EFAULT)?, r.atomic_u64(base + TAIL).ok_or(Errno::EFAULT)?);
    let pending = r.atomic_u64(base + LOST_PENDING).ok_or(Errno::EFAULT)?;
    let _g = map.write_lock();
    let mut h = head.load(Ordering::Relaxed);
    let lost = pending.load(Ordering::Relaxed);
    let lost_size = if lost > 0 { LOST_RECORD } else { 0 };
    if h.wrapping_add(size + lost_size).wrapping_sub(tail.load(Ordering::Acquire)) > ring {
        map.desc().lost.fetch_add(1, Ordering::Relaxed);
        pending.store(lost + 1, Ordering::Relaxed);
        return Err(Errno::ENOSPC);
    }
    if lost > 0 {
        let mut rec = Vec::with_capacity(LOST_RECORD as usize);
        rec.extend_from_slice(&PERF_RECORD_LOST.to_le_bytes());
        rec.extend_from_slice(&0u16.to_le_bytes());
        rec.extend_from_slice(&(LOST_RECORD as u16).to_le_bytes());
        rec.extend_from_slice(&0u64.to_le_bytes());
        rec.extend_from_slice(&lost.to_le_bytes());
        write_wrapped(map, base, h, &rec);
        h = h.wrapping_add(LOST_RECORD);
        pending.store(0, Ordering::Relaxed);
    }
    let mut rec = Vec::with_capacity(size as usize);
    rec.extend_from_slice(&PERF_RECORD_SAMPLE.to_le_bytes());
    rec.extend_from_slice(&0u16.to_le_bytes());
    rec.extend_from_slice(&(size as u16).to_le_bytes());
    // The raw size counts the padding, as the kernel's does (`u32 size` + data fill whole
    // 8-byte words; bcc's reader checks it).
    rec.extend_from_slice(&((size - 12) as u32).to_le_bytes());
    rec.extend_from_slice(data);
    rec.resize(size as usize, 0);
    write_wrapped(map, base, h, &rec);
    head.store(h.wrapping_add(size), Ordering::Release);
    drop(_g);
    r.records_published();
    Ok(())
}

/// Counts `n` samples lost to ring `cpu` (by a producer elsewhere: the kernel's, relayed), to
/// be reported with the next sample that fits.
pub(crate) fn add_lost(map: &Map, cpu: u32, n: u64) -> Result<(), Errno> {
    if cpu >= map.ncpus() {
        return Err(Errno::E2BIG);
    }
    let pending = map.region().atomic_u64(ring_base(map, cpu) + LOST_PENDING).ok_or(Errno::EFAULT)?;
    let _g = map.write_lock();
    pending.fetch_add(n, Ordering::Relaxed);
    map.desc().lost.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Reads every ring's samples (`PERF_RECORD_LOST` and other records are skipped).
pub(crate) fn consume(map: &Map, f: &mut dyn FnMut(PerfRecord<'_>)) -> usize {
    let r = map.region();
    let mut n = 0;
    for cpu in 0..map.ncpus() {
        let base = ring_base(map, cpu);
        let (Some(head), Some(tail)) = (r.atomic_u64(base + HEAD), r.atomic_u64(base + TAIL)) else { continue };
        let mut t = tail.load(Ordering::Relaxed);
        let h = head.load(Ordering::Acquire);
        if h.wrapping_sub(t) > ring_size(map, base) {
            // Positions no writer makes (a scribble): skip to the head.
            t = h;
        }
        while t != h {
            let mut hdr = [0u8; 12];
            read_wrapped(map, base, t, &mut hdr);
            let size = u16::from_le_bytes([hdr[6], hdr[7]]) as u64;
            if u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes")) != PERF_RECORD_SAMPLE {
                if size < 8 || size > h.wrapping_sub(t) {
                    t = h;
                    break;
                }
                t = t.wrapping_add(size);
                continue;
            }
            let raw = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes")) as u64;
            if size < 12 || raw + 12 > size || size > h.wrapping_sub(t) {
                t = h;
                break;
            }
            let mut data = vec![0u8; raw as usize];
            read_wrapped(map, base, t.wrapping_add(12), &mut data);
            f(PerfRecord { cpu, data: &data });
            n += 1;
            t = t.wrapping_add(size);
        }
        tail.store(t, Ordering::Release);
    }
    n
}
