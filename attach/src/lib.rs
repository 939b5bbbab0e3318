//! # bpftime-attach: userspace uprobes on x86_64
//!
//! What it is: an inline-hook engine built on iced-x86 ([`hook`]): it patches a function (or an
//! offset inside it) with a jump to a per-probe stub that hands a kernel-layout [`PtRegs`] to
//! [`ProbeHandler`]s, relocates the overwritten instructions, and patches safely while other
//! threads run the code ([`patch`]). Return probes use return-address replacement with a
//! per-thread shadow stack. [`symbols`] resolves `BINARY:FUNCTION[+OFFSET]` targets in the
//! executable and shared libraries from `/proc/self/maps` and ELF symbol tables.
//!
//! What it is not: it knows nothing of eBPF; the agent connects handlers to programs.
//!
//! Unsafe code is confined to `patch.rs` (code writing, signals, mappings) and the stubs'
//! dispatch functions in `hook.rs`.

pub mod hook;
mod patch;
pub mod procmaps;
pub mod regs;
pub mod symbols;

pub use hook::{attach, detach, in_probe, without_probes, AttachError, ProbeHandler, ProbeId, ProbeKind, SiteInfo, MISSED};
pub use patch::{MOVED_THREADS, TRAPS_REDIRECTED};
pub use regs::PtRegs;
pub use symbols::{resolve, ResolveError, Resolved, Target};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_test_target(a: u64, b: u64) -> u64 {
        // Enough work that the prologue is more than a jump.
        let mut x = a;
        for i in 0..b {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x)
    }

    /// Counts hits and keeps di, si, ax of the last one.
    #[derive(Default)]
    struct Count(AtomicU64, AtomicU64, AtomicU64, AtomicU64);

    impl ProbeHandler for Count {
        fn on_hit(&self, regs: &mut PtRegs) {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.store(regs.di, Ordering::Relaxed);
            self.2.store(regs.si, Ordering::Relaxed);
            self.3.store(regs.ax, Ordering::Relaxed);
        }
    }

    #[test]
    fn entry_and_return_probes_see_arguments_and_results() {
        let addr = bpftime_attach_test_target as *const () as u64;
        let want = bpftime_attach_test_target(3, 4);
        let entry = Arc::new(Count::default());
        let ret = Arc::new(Count::default());
        let info = SiteInfo { function_size: 0, at_entry: true };
        let e = attach(addr, info, ProbeKind::Entry, entry.clone()).unwrap();
        let r = attach(addr, info, ProbeKind::Return, ret.clone()).unwrap();
        assert_eq!(std::hint::black_box(bpftime_attach_test_target)(3, 4), want);
        assert_eq!(entry.0.load(Ordering::Relaxed), 1);
        assert_eq!((entry.1.load(Ordering::Relaxed), entry.2.load(Ordering::Relaxed)), (3, 4), "di, si at entry");
        assert_eq!(ret.0.load(Ordering::Relaxed), 1);
        assert_eq!(ret.3.load(Ordering::Relaxed), want, "ax = result at return");
        detach(e).unwrap();
        detach(r).unwrap();
        assert_eq!(std::hint::black_box(bpftime_attach_test_target)(3, 4), want);
        assert_eq!(entry.0.load(Ordering::Relaxed), 1, "detached: no more hits");
    }
}

#[cfg(test)]
mod stress {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bpftime_attach_stress_target(a: u64, b: u64) -> u64 {
        let x = std::hint::black_box(a).wrapping_mul(3);
        x.wrapping_add(std::hint::black_box(b))
    }

    struct Hits(AtomicU64);
    impl ProbeHandler for Hits {
        fn on_hit(&self, _: &mut PtRegs) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn attach_detach_while_threads_call() {
        let addr = bpftime_attach_stress_target as *const () as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = std::hint::black_box(bpftime_attach_stress_target)(n, t);
                        assert_eq!(r, n.wrapping_mul(3).wrapping_add(t));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let hits = Arc::new(Hits(AtomicU64::new(0)));
        for _ in 0..100 {
            let id = attach(addr, SiteInfo { function_size: 0, at_entry: true }, ProbeKind::Entry, hits.clone()).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(500));
            detach(id).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let calls: u64 = workers.into_iter().map(|w| w.join().expect("worker crashed")).sum();
        assert!(hits.0.load(Ordering::Relaxed) <= calls);
    }
}
