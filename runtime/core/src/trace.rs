//! The trace pipe: where `bpf_trace_printk` lines go, in the shared region, so that
//! `bpftime trace` in another process can follow them.
//!
//! A byte ring of records `{ pos: u64, len: u32, pad: u32, bytes }` (8-aligned). `pos` is the
//! record's absolute position, so a reader that fell behind by more than the ring's size notices
//! (the record at its position has another `pos`) and skips to the newest data. A record that
//! would not fit before the end is preceded by a skip marker (`len == u32::MAX`).

use bpftime_shm::{ShmError, ShmRegion};
use std::sync::atomic::Ordering;

/// Ring size in bytes of a pipe in `region`: a sixteenth of the region, from 256 KiB to 4 MiB
/// (a burst of a GPU's trace lines, one per block of a large launch, written back at once must
/// fit while `bpftime run` or `trace` is reading; every process of one region agrees on it).
pub fn ring_size(region: &ShmRegion) -> u64 {
    (region.size() / 16).clamp(256 << 10, 4 << 20) & !7
}
const HDR: u64 = 64;
const SKIP: u32 = u32::MAX;
/// Longest line kept.
const MAX_LINE: usize = 1024;

/// A handle on the region's trace pipe.
pub struct TracePipe<'a> {
    region: &'a ShmRegion,
    base: u64,
    /// Ring size in bytes ([`ring_size`]).
    size: u64,
}

impl<'a> TracePipe<'a> {
    /// The region's trace pipe, created on first use.
    pub fn open(region: &'a ShmRegion) -> Result<Self, ShmError> {
        let size = ring_size(region);
        let base = region.trace_ring(HDR + size)?;
        Ok(TracePipe { region, base, size })
    }

    /// The region's trace pipe if one was created.
    pub fn existing(region: &'a ShmRegion) -> Option<Self> {
        let size = ring_size(region);
        region.existing_trace_ring(HDR + size).map(|base| TracePipe { region, base, size })
    }

    /// The head word; `base` was checked to leave room for the whole ring when the pipe was
    /// opened, so this is only None if the region shrank (it cannot).
    fn head(&self) -> Option<&std::sync::atomic::AtomicU64> {
        self.region.atomic_u64(self.base + 8)
    }

    /// Position after the newest record.
    pub fn position(&self) -> u64 {
        self.head().map_or(0, |h| h.load(Ordering::Acquire))
    }

    /// Appends a line (cut to 1024 bytes).
    pub fn write(&self, line: &[u8]) {
        let line = &line[..line.len().min(MAX_LINE)];
        let (Some(lock), Some(head)) = (self.region.lock_at(self.base), self.head()) else { return };
        let _g = lock.lock();
        // The head is in shared memory: keep it meaningful even if someone scribbled on it.
        let mut pos = head.load(Ordering::Relaxed) & !7;
        if pos > u64::MAX / 2 {
            pos = 0;
        }
        let len = (16 + line.len() as u64).div_ceil(8) * 8;
        let at = pos % self.size;
        if at + len > self.size {
            self.put_header(pos, SKIP);
            pos += self.size - at;
        }
        let at = pos % self.size;
        self.region.write(self.base + HDR + at + 16, line);
        self.put_header(pos, line.len() as u32);
        head.store(pos + len, Ordering::Release);
    }

    fn put_header(&self, pos: u64, len: u32) {
        let at = self.base + HDR + pos % self.size;
        self.region.write(at, &pos.to_le_bytes());
        self.region.write(at + 8, &len.to_le_bytes());
    }

    /// Lines from position `from` on, and the position after them.
    pub fn read_from(&self, mut from: u64) -> (Vec<String>, u64) {
        let head = self.position();
        if head.saturating_sub(from) > self.size || from > head {
            from = head; // fell behind (or a stale position): skip to live data
        }
        let mut lines = vec![];
        while from < head {
            let at = self.base + HDR + from % self.size;
            let (mut p, mut l) = ([0u8; 8], [0u8; 4]);
            self.region.read(at, &mut p);
            self.region.read(at + 8, &mut l);
            if u64::from_le_bytes(p) != from {
                from = self.position();
                break;
            }
            let len = u32::from_le_bytes(l);
            if len == SKIP {
                from += self.size - from % self.size;
                continue;
            }
            if len as usize > MAX_LINE || !from.is_multiple_of(8) {
                // Not a record the writer makes: the ring was scribbled on.
                from = head;
                break;
            }
            let mut buf = vec![0u8; len as usize];
            self.region.read(at + 16, &mut buf);
            lines.push(String::from_utf8_lossy(&buf).to_string());
            from += (16 + len as u64).div_ceil(8) * 8;
        }
        (lines, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One trace line per block of a 2^18-thread launch, three launches, written back at once
    /// (as a GPU's trace ring is): a reader that starts after the burst still gets every line
    /// from a region of the default size.
    #[test]
    fn a_gpu_sized_burst_of_lines_fits_the_pipe_of_a_default_region() {
        let region = ShmRegion::anonymous(bpftime_shm::DEFAULT_SIZE).unwrap();
        let pipe = TracePipe::open(&region).unwrap();
        let line = |i: usize| format!("vector_add_bench-4242 [000] ....  1234.567890: bpf_trace_printk: vector_add: block {i} thread 0 exits");
        for i in 0..3072 {
            pipe.write(line(i).as_bytes());
        }
        let (lines, end) = TracePipe::existing(&region).unwrap().read_from(0);
        assert_eq!(lines.len(), 3072);
        assert_eq!(lines[3071], line(3071));
        assert_eq!(end, pipe.position());
        // A small region keeps a small pipe.
        assert_eq!(ring_size(&ShmRegion::anonymous(bpftime_shm::MIN_SIZE).unwrap()), 256 << 10);
    }
}
