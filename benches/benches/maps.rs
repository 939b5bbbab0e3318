//! Per-operation cost of map helpers called from JIT-compiled programs: each program runs
//! `N` operations in a loop; the time per run divided by `N` is the cost per operation
//! (the `empty_loop` row is the loop alone). With 2 threads, both run the program at once
//! on the same maps, each on keys of its own for hash maps (as two CPUs tracing different
//! processes or connections do); the figure is wall time per operation per thread.

use bpftime_object::Object;
use bpftime_runtime::{EngineKind, LoadedProgram, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_vm::exec::Context;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u64 = 1000;

fn setup() -> (Arc<Runtime>, Vec<(String, Arc<LoadedProgram>)>) {
    let obj = Object::parse(include_bytes!(concat!(env!("OUT_DIR"), "/map_ops.bpf.o"))).expect("parses");
    let rt = Arc::new(Runtime::new(Arc::new(ShmRegion::anonymous(64 << 20).expect("region")), EngineKind::Jit));
    let loaded = rt.load_object(&obj).expect("loads");
    // Fill the hash maps so lookups hit.
    for m in &loaded.maps {
        let vs = m.syscall_value_size();
        for k in 0..128u64 {
            let key: Vec<u8> = match m.spec().key_size {
                4 => (k as u32).to_le_bytes().to_vec(),
                64 => [k.to_le_bytes().to_vec(), vec![0; 56]].concat(),
                _ => continue,
            };
            let _ = m.update(&key, &vec![1u8; vs], 0);
        }
    }
    let progs = loaded.programs.iter().map(|(name, _, id)| (name.clone(), rt.program(*id).expect("program"))).collect();
    (rt, progs)
}

fn run_once(rt: &Runtime, p: &LoadedProgram) {
    run_from(rt, p, 0);
}

/// One run whose hash keys start at `base`.
fn run_from(rt: &Runtime, p: &LoadedProgram, base: u64) {
    let mut input = [N.to_le_bytes(), [0; 8], base.to_le_bytes()].concat();
    let r = rt.run(p, Context::Mem(&mut input), 0, 0, false).expect("runs");
    assert_eq!(r, 0);
}

fn bench_maps(c: &mut Criterion) {
    let (rt, progs) = setup();
    let mut g = c.benchmark_group("map_ops_1_thread");
    g.throughput(Throughput::Elements(N)).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (name, p) in &progs {
        if name == "ringbuf_reserve_submit" {
            // Drain between runs so the ring never fills.
            let rb = bpftime_maps::Map::open_by_name(rt.region(), "rb").expect("rb");
            g.bench_function(name.as_str(), |b| {
                b.iter(|| {
                    run_once(&rt, p);
                    rb.ringbuf_consume(&mut |_| {});
                })
            });
        } else {
            g.bench_function(name.as_str(), |b| b.iter(|| run_once(&rt, p)));
        }
    }
    g.finish();

    let mut g = c.benchmark_group("map_ops_2_threads");
    g.throughput(Throughput::Elements(N)).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (name, p) in &progs {
        if name == "ringbuf_reserve_submit" {
            continue;
        }
        g.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2u64 {
                        let rt = &rt;
                        s.spawn(move || {
                            for _ in 0..iters {
                                run_from(rt, p, 64 * t);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_maps);
criterion_main!(benches);
