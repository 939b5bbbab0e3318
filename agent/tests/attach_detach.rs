//! Attach and detach while 8 threads call the probed function in a tight loop: the function
//! keeps working, nothing crashes, and counts are exact while the probe is attached.

use bpftime::ProgramProbe;
use bpftime_attach::{attach, detach, ProbeKind, SiteInfo};
use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::build_example;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// The probed function: long enough to patch, with a result the callers check.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_test_probed(a: u64, b: u64) -> u64 {
    let x = std::hint::black_box(a).wrapping_mul(3);
    x.wrapping_add(std::hint::black_box(b))
}

const THREADS: usize = 8;

#[test]
fn attach_detach_under_load() {
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::new(Arc::new(ShmRegion::anonymous(16 << 20).unwrap()), EngineKind::Jit)));
    let obj = Object::parse(&std::fs::read(build_example("uprobe_calls")).unwrap()).unwrap();
    let loaded = rt.load_object(&obj).unwrap();
    let on_add = loaded.programs.iter().find(|p| p.0 == "on_add").unwrap().2;
    let prog = rt.program(on_add).unwrap();
    let stats: Map = loaded.maps[0].clone();
    let count = || {
        let mut v = [0u8; 8];
        stats.lookup(&0u32.to_le_bytes(), &mut v).unwrap();
        u64::from_le_bytes(v)
    };
    let addr = bpftime_test_probed as *const () as u64;
    let info = SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false };
    let handler = || Arc::new(ProgramProbe::new(rt, prog.clone(), 0, addr, false, bpftime::Effect::MayOverride, 0));

    // Stress: attach and detach over and over while the threads hammer the function.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = std::hint::black_box(bpftime_test_probed)(n, t as u64);
                    assert_eq!(r, n.wrapping_mul(3).wrapping_add(t as u64), "wrong result under a probe");
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for _ in 0..40 {
        let id = attach(addr, info, ProbeKind::Entry, handler()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        detach(id).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker crashed");
    }
    let stressed = count();
    assert!(stressed > 0 && stressed <= calls.load(Ordering::Relaxed), "{stressed} hits for {} calls", calls.load(Ordering::Relaxed));

    // Exact: attached for the whole of a known number of calls per thread.
    let per_thread = 100_000u64;
    let start = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                start.wait();
                for n in 0..per_thread {
                    std::hint::black_box(bpftime_test_probed)(n, t as u64);
                }
                done.wait();
            })
        })
        .collect();
    let id = attach(addr, info, ProbeKind::Entry, handler()).unwrap();
    start.wait();
    done.wait();
    detach(id).unwrap();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(count() - stressed, THREADS as u64 * per_thread, "exact count while attached");
    // Detached: no more hits, and the original code runs.
    bpftime_test_probed(1, 2);
    assert_eq!(count() - stressed, THREADS as u64 * per_thread);
}
