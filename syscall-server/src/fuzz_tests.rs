//! Garbage from a loader: every bpf() command, and the perf event, ioctl and mmap entry points,
//! with random attributes (sizes, flags, ids, fds of objects that exist, pointers that point
//! nowhere) must answer an errno or succeed, never panic, abort or hang, as the kernel does.

use crate::attr::{Attr, ATTR_SIZE};
use crate::server::Server;
use bpftime_shm::ShmRegion;
use std::sync::Arc;

/// xorshift64*: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A field value a loader might send: small numbers, sizes near limits, fds of ours, ids of
/// objects, pointers to nothing, all bits set.
fn field(rng: &mut Rng, fds: &[i32]) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => rng.below(64),
        2 => fds.get(rng.below(fds.len().max(1) as u64) as usize).map_or(3, |&fd| fd as u64),
        3 => 1 << rng.below(64),
        4 => u64::MAX - rng.below(4),
        // An address in a page nobody maps (the kernel reports EFAULT for such).
        5 => 0x10_0000 + rng.below(0x1000),
        6 => rng.below(1 << 20),
        _ => rng.next(),
    }
}

fn random_attr(rng: &mut Rng, fds: &[i32]) -> Attr {
    let mut a = vec![0u8; ATTR_SIZE];
    // Most attributes are mostly zero: fill a few fields.
    for _ in 0..rng.below(12) {
        let at = rng.below(ATTR_SIZE as u64 / 4) as usize * 4;
        let v = field(rng, fds);
        if at + 8 <= ATTR_SIZE && rng.below(2) == 0 {
            a[at..at + 8].copy_from_slice(&v.to_le_bytes());
        } else {
            a[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
        }
    }
    Attr(a)
}

/// A valid `BPF_MAP_CREATE` of a small array or hash, to give the fuzzer objects to name.
fn some_map(s: &Server, hash: bool) -> i32 {
    let mut a = Attr(vec![0u8; ATTR_SIZE]);
    a.set_u32(0, if hash { 1 } else { 2 });
    a.set_u32(4, 4);
    a.set_u32(8, 8);
    a.set_u32(12, 16);
    s.bpf(crate::attr::MAP_CREATE, &mut a).expect("a valid map") as i32
}

#[test]
fn random_bpf_calls_answer_errnos_and_never_panic() {
    let region = Arc::new(ShmRegion::anonymous(32 << 20).unwrap());
    let s = Server::new(region);
    let seed = std::env::var("BPFTIME_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_b0f5_u64);
    let mut rng = Rng(seed.wrapping_mul(2) | 1);
    let calls: usize = std::env::var("BPFTIME_FUZZ_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut fds: Vec<i32> = vec![some_map(&s, false), some_map(&s, true)];
    let start = std::time::Instant::now();
    let mut ok = 0;
    for i in 0..calls {
        let cmd = rng.below(40) as u32;
        let mut a = random_attr(&mut rng, &fds);
        let before = a.0.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.bpf(cmd, &mut a)));
        let r = r.unwrap_or_else(|_| panic!("call {i} (seed {seed:#x}): bpf({cmd}) panicked with attr {before:02x?}"));
        if let Ok(fd) = r {
            ok += 1;
            // Commands that make an fd: keep some for later calls, close the rest.
            if s.handle(fd as i32).is_some() {
                if fds.len() < 32 {
                    fds.push(fd as i32);
                } else {
                    s.closed(fd as i32);
                    // SAFETY: an eventfd the server made for this fd and no longer names.
                    unsafe { libc::close(fd as i32) };
                }
            }
        }
        // The other entry points, less often.
        if i % 4 == 0 {
            let fd = fds[rng.below(fds.len() as u64) as usize];
            let (x, y, z) = (field(&mut rng, &fds), field(&mut rng, &fds), field(&mut rng, &fds));
            let pa = random_attr(&mut rng, &fds);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = s.perf_event_open(&pa, x as i32, y as i32);
                let _ = s.perf_ioctl(fd, x, y);
                let _ = s.mmap_source(fd, x, y, z as i32, 1);
            }));
            assert!(r.is_ok(), "call {i} (seed {seed:#x}): perf_event_open, ioctl or mmap panicked: fd {fd}, {x:#x} {y:#x} {z:#x}, attr {:02x?}", pa.0);
        }
    }
    s.exiting();
    println!("{calls} random calls (seed {seed:#x}), {ok} succeeded, in {:?}", start.elapsed());
}
