//! Perf buffers a kernel program writes (`--kernel-passthrough`): the loader reads the region's
//! rings, so each of its perf events bound to a PERF_EVENT_ARRAY that moved to the kernel gets
//! a kernel twin (a `PERF_COUNT_SW_BPF_OUTPUT` event on the same CPU, put in the kernel map's
//! slot) whose records a thread copies into the region's ring of that slot as they arrive.
//! Programs in traced processes keep writing the region's ring directly, so the loader reads
//! the records of both in one buffer, as it would read the kernel's.
//!
//! The kernel ring's layout is `perf_event_mmap_page` (perf_event_open(2)): `data_head` at
//! 1024, `data_tail` at 1032, `data_offset` at 1040, `data_size` at 1048; records are
//! `struct perf_event_header` (type u32, misc u16, size u16), a sample's raw data after a u32
//! size. Samples are relayed; the kernel's `PERF_RECORD_LOST` records become losses of the
//! region's ring, reported with its next sample as the kernel would.

use crate::raw;
use bpftime_maps::Map;
use std::ffi::c_long;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

const PAGE: usize = 4096;
const PERF_RECORD_SAMPLE: u32 = 9;
/// `PERF_RECORD_LOST`: id (u64) and how many records the kernel lost (u64) after the header.
const PERF_RECORD_LOST: u32 = 2;
const PERF_EVENT_IOC_ENABLE: c_long = 0x2400;
/// perf_event_open(2)'s flag for a close-on-exec fd.
const PERF_FLAG_FD_CLOEXEC: c_long = 8;

/// One kernel ring relayed into a region ring.
struct Twin {
    /// The kernel perf event.
    fd: i32,
    /// Its mapping: a header page and `size` data bytes.
    base: usize,
    len: usize,
    /// The region map and slot its records go to.
    map: Map,
    slot: u32,
}

impl Drop for Twin {
    fn drop(&mut self) {
        raw::syscall6(libc::SYS_munmap, [self.base as c_long, self.len as c_long, 0, 0, 0, 0]);
        raw::syscall6(libc::SYS_close, [self.fd as c_long, 0, 0, 0, 0, 0]);
    }
}

struct Relay {
    epoll: i32,
    twins: Mutex<Vec<Twin>>,
}

static RELAY: OnceLock<Option<Relay>> = OnceLock::new();

fn relay() -> Option<&'static Relay> {
    RELAY
        .get_or_init(|| {
            let epoll = raw::result(raw::syscall6(libc::SYS_epoll_create1, [libc::EPOLL_CLOEXEC as c_long, 0, 0, 0, 0, 0])).ok()? as i32;
            bpftime_runtime::threads::spawn_quiet("bpftime-relay", || crate::beside::quiet(run)).ok()?;
            Some(Relay { epoll, twins: Mutex::new(Vec::new()) })
        })
        .as_ref()
}

fn lock(twins: &Mutex<Vec<Twin>>) -> std::sync::MutexGuard<'_, Vec<Twin>> {
    twins.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the kernel twin of slot `slot` of region perf event array `map`, puts it in slot
/// `slot` of kernel map `kernel_map` and relays its records; `data_pages` is the loader's ring
/// size in pages. A twin the slot had before is dropped.
pub fn start(kernel_map: i32, map: Map, slot: u32, data_pages: usize) -> Result<(), i32> {
    let r = relay().ok_or(libc::ENOMEM)?;
    forget(map.id(), slot);
    // PERF_TYPE_SOFTWARE, PERF_COUNT_SW_BPF_OUTPUT, sample_period 1, PERF_SAMPLE_RAW, one
    // wakeup per record: what libbpf's perf_buffer__new opens.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_le_bytes());
    attr[4..8].copy_from_slice(&128u32.to_le_bytes());
    attr[8..16].copy_from_slice(&10u64.to_le_bytes());
    attr[16..24].copy_from_slice(&1u64.to_le_bytes());
    attr[24..32].copy_from_slice(&(1u64 << 10).to_le_bytes());
    attr[48..52].copy_from_slice(&1u32.to_le_bytes());
    let fd = raw::result(raw::syscall6(libc::SYS_perf_event_open, [attr.as_ptr() as c_long, -1, slot as c_long, -1, PERF_FLAG_FD_CLOEXEC, 0]))? as i32;
    // The kernel maps a header page and a power of two of data pages.
    let len = (1 + data_pages.max(1).next_power_of_two()) * PAGE;
    let base = match raw::result(raw::syscall6(
        libc::SYS_mmap,
        [0, len as c_long, (libc::PROT_READ | libc::PROT_WRITE) as c_long, libc::MAP_SHARED as c_long, fd as c_long, 0],
    )) {
        Ok(b) => b as usize,
        Err(e) => {
            raw::syscall6(libc::SYS_close, [fd as c_long, 0, 0, 0, 0, 0]);
            return Err(e);
        }
    };
    let twin = Twin { fd, base, len, map, slot };
    raw::result(raw::syscall6(libc::SYS_ioctl, [fd as c_long, PERF_EVENT_IOC_ENABLE, 0, 0, 0, 0]))?;
    let mut u = [0u8; crate::attr::ATTR_SIZE];
    u[0..4].copy_from_slice(&(kernel_map as u32).to_le_bytes());
    u[8..16].copy_from_slice(&(&slot as *const u32 as u64).to_le_bytes());
    u[16..24].copy_from_slice(&(&fd as *const i32 as u64).to_le_bytes());
    crate::kernel::bpf(crate::attr::MAP_UPDATE_ELEM, &mut u)?;
    let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
    raw::result(raw::syscall6(
        libc::SYS_epoll_ctl,
        [r.epoll as c_long, libc::EPOLL_CTL_ADD as c_long, fd as c_long, &mut event as *mut libc::epoll_event as c_long, 0, 0],
    ))?;
    lock(&r.twins).push(twin);
    Ok(())
}

/// Stops relaying into slot `slot` of region map `map` (its perf event was closed).
pub fn forget(map: u32, slot: u32) {
    if let Some(r) = RELAY.get().and_then(Option::as_ref) {
        lock(&r.twins).retain(|t| !(t.map.id() == map && t.slot == slot));
    }
}

/// The relay thread: waits for any twin to have records and copies them.
fn run() {
    let r = loop {
        match RELAY.get() {
            Some(Some(r)) => break r,
            Some(None) => return,
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // A timeout too, so a twin added while we slept is drained even if its wakeup came first.
        raw::syscall6(libc::SYS_epoll_wait, [r.epoll as c_long, events.as_mut_ptr() as c_long, events.len() as c_long, 100, 0, 0]);
        for twin in lock(&r.twins).iter() {
            drain(twin);
        }
    }
}

/// Copies the records waiting in `twin`'s kernel ring into its region ring.
fn drain(twin: &Twin) {
    let word = |at: usize| {
        // SAFETY: `at` is one of the u64 fields of the header page of the ring mapped at
        // `twin.base` (at least one page), 8-byte aligned; the kernel updates data_head
        // concurrently, so it is read as an atomic.
        unsafe { AtomicU64::from_ptr((twin.base + at) as *mut u64) }
    };
    let data_offset = match word(1040).load(Ordering::Relaxed) as usize {
        0 => PAGE,
        o => o,
    };
    let size = match word(1048).load(Ordering::Relaxed) as usize {
        0 => twin.len - PAGE,
        s => s,
    };
    if !size.is_power_of_two() || data_offset + size > twin.len {
        return;
    }
    // SAFETY: the data area [data_offset, data_offset + size) lies inside the mapping (checked
    // above) and stays mapped while `twin` lives; the kernel writes only past data_head.
    let data = unsafe { std::slice::from_raw_parts((twin.base + data_offset) as *const u8, size) };
    let read = |pos: u64, out: &mut [u8]| {
        for (i, b) in out.iter_mut().enumerate() {
            *b = data[(pos as usize + i) % size];
        }
    };
    let head = word(1024).load(Ordering::Acquire);
    let mut tail = word(1032).load(Ordering::Relaxed);
    let mut record = Vec::new();
    while tail < head {
        let mut h = [0u8; 8];
        read(tail, &mut h);
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u16::from_le_bytes([h[6], h[7]]) as u64;
        if len < 8 || tail + len > head {
            break;
        }
        record.resize(len as usize - 8, 0);
        read(tail + 8, &mut record);
        if kind == PERF_RECORD_SAMPLE && record.len() >= 4 {
            let raw_len = (u32::from_le_bytes([record[0], record[1], record[2], record[3]]) as usize).min(record.len() - 4);
            // A full region ring counts it as lost, as for any producer.
            let _ = twin.map.perf_output(twin.slot, &record[4..4 + raw_len]);
        } else if kind == PERF_RECORD_LOST && record.len() >= 16 {
            let n = u64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
            let _ = twin.map.perf_lost(twin.slot, n);
        }
        tail += len;
    }
    word(1032).store(tail, Ordering::Release);
}
