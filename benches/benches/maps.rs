//! Per-operation cost of map helpers called from programs: each program runs `N` operations in
//! a loop; the time per run divided by `N` is the cost per operation (the `empty_loop` row is
//! the loop alone). With 2 threads, both run the program at once on the same maps, each on keys
//! of its own for hash maps (as two CPUs tracing different processes or connections do); the
//! figure is wall time per operation per thread. The `kernel_*` groups run the same programs
//! (`syscall` programs) in the kernel, one BPF_PROG_TEST_RUN per run of `N` operations, when it
//! loads them (root): the reference for how a map scales.

use bpftime_object::Object;
use bpftime_runtime::{EngineKind, LoadedProgram, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::kernel::KernelObject;
use bpftime_vm::exec::Context;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations per run (`N_OPS` of the programs).
const N: u64 = 1000;

fn object() -> Object {
    Object::parse(include_bytes!(concat!(env!("OUT_DIR"), "/map_ops.bpf.o"))).expect("parses")
}

/// The keys the hash maps are filled with (so that lookups hit): 0 to 127.
fn fill_keys(key_size: u32) -> Vec<Vec<u8>> {
    (0..128u64)
        .filter_map(|k| match key_size {
            4 => Some((k as u32).to_le_bytes().to_vec()),
            64 => Some([k.to_le_bytes().to_vec(), vec![0; 56]].concat()),
            _ => None,
        })
        .collect()
}

fn setup() -> (Arc<Runtime>, Vec<(String, Arc<LoadedProgram>)>) {
    let rt = Arc::new(Runtime::new(Arc::new(ShmRegion::anonymous(64 << 20).expect("region")), EngineKind::Jit));
    let loaded = rt.load_object(&object()).expect("loads");
    for m in &loaded.maps {
        let vs = m.syscall_value_size();
        for key in fill_keys(m.spec().key_size) {
            let _ = m.update(&key, &vec![1u8; vs], 0);
        }
    }
    let progs = loaded.programs.iter().map(|(name, _, id)| (name.clone(), rt.program(*id).expect("program"))).collect();
    (rt, progs)
}

/// The same object in the kernel, its maps filled as ours; None (said why) where it cannot be.
fn kernel_setup() -> Option<KernelObject> {
    let obj = object();
    let k = KernelObject::load(&obj).map_err(|e| println!("skip the kernel rows: {e}")).ok()?;
    for def in obj.maps.iter().filter(|d| d.map_type == 1 || d.map_type == 5) {
        // BPF_MAP_TYPE_HASH (8 bytes a value) and PERCPU_HASH (8 bytes a possible CPU).
        let vs = if def.map_type == 5 { 8 * bpftime_maps::possible_cpus() as usize } else { def.value_size as usize };
        for key in fill_keys(def.key_size) {
            k.update(&def.name, &key, &vec![1u8; vs]).expect("kernel map update");
        }
    }
    Some(k)
}

fn run_once(rt: &Runtime, p: &LoadedProgram) {
    run_from(rt, p, 0);
}

/// The programs' context: `struct input { sum, base }`.
fn input(base: u64) -> Vec<u8> {
    [[0; 8], base.to_le_bytes()].concat()
}

/// One run whose hash keys start at `base`.
fn run_from(rt: &Runtime, p: &LoadedProgram, base: u64) {
    let r = rt.run(p, Context::Mem(&mut input(base)), 0, 0, false).expect("runs");
    assert_eq!(r, 0);
}

/// One run in the kernel whose hash keys start at `base`.
fn kernel_run_from(k: &KernelObject, name: &str, base: u64) {
    assert_eq!(k.test_run(name, &mut input(base)), Ok(0));
}

/// Wall time of two threads running `run(base)` `iters` times each at once, the first with keys
/// from 0, the second from 64.
fn on_two_threads(iters: u64, run: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let run = &run;
            s.spawn(move || (0..iters).for_each(|_| run(64 * t)));
        }
    });
    start.elapsed()
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
        g.bench_function(name.as_str(), |b| b.iter_custom(|iters| on_two_threads(iters, |base| run_from(&rt, p, base))));
    }
    g.finish();

    let Some(k) = kernel_setup() else { return };
    // (No reader drains the kernel's ring buffer.)
    let names: Vec<&str> = progs.iter().map(|(name, _)| name.as_str()).filter(|&n| n != "ringbuf_reserve_submit").collect();
    let mut g = c.benchmark_group("kernel_map_ops_1_thread");
    g.throughput(Throughput::Elements(N)).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for &name in &names {
        g.bench_function(name, |b| b.iter(|| kernel_run_from(&k, name, 0)));
    }
    g.finish();
    let mut g = c.benchmark_group("kernel_map_ops_2_threads");
    g.throughput(Throughput::Elements(N)).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for &name in &names {
        g.bench_function(name, |b| b.iter_custom(|iters| on_two_threads(iters, |base| kernel_run_from(&k, name, base))));
    }
    g.finish();
}

criterion_group!(benches, bench_maps);
criterion_main!(benches);
