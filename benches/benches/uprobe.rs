//! Cost per call of a small function: without a probe, with our uprobe (empty program, and a
//! program that updates an array map), with our uretprobe, and with the kernel's uprobe running
//! the same clang-built programs (raw bpf() + perf_event_open, as root).

use bpftime::{Effect, ProgramProbe};
use bpftime_attach::{attach, detach, ProbeHandler, ProbeKind, PtRegs, SiteInfo};
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// The probed function.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_bench_target(a: u64, b: u64) -> u64 {
    black_box(a).wrapping_mul(3) ^ black_box(b)
}

/// What [`bpftime_bench_calls_out`] calls through a pointer.
#[inline(never)]
extern "C" fn bpftime_bench_callee(a: u64) -> u64 {
    a.wrapping_mul(3)
}

/// A probed function that calls code its compiler cannot see (through a pointer, as calls into
/// shared libraries go): its callers rely on no call-clobbered register, so the stubs keep only
/// the ABI's vector registers.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bpftime_bench_calls_out(a: u64, b: u64) -> u64 {
    let f: extern "C" fn(u64) -> u64 = black_box(bpftime_bench_callee);
    f(a) ^ black_box(b)
}

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uprobe_bench.bpf.o"));

/// A handler that only looks at the registers.
struct NoProgram;

impl ProbeHandler for NoProgram {
    fn on_hit(&self, regs: &PtRegs, _level: usize) -> Option<u64> {
        black_box(regs);
        None
    }
}

fn bench(c: &mut Criterion) {
    let obj = Object::parse(OBJECT).expect("object");
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Jit)));
    let loaded = rt.load_object(&obj).expect("loads");
    let prog = |name: &str| rt.program(loaded.programs.iter().find(|p| p.0 == name).expect("program").2).expect("compiles");
    let addr = bpftime_bench_target as *const () as u64;
    // The function's size and padding from the symbol table, as the agent resolves them (return
    // probes patch its `ret`s when they can).
    let info = bpftime_attach::resolve(&bpftime_attach::Target::parse("/proc/self/exe:bpftime_bench_target").expect("target"))
        .map(|r| SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice })
        .unwrap_or(SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false });

    let mut g = c.benchmark_group("uprobe_per_call");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("no_probe", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
    // The hook alone: stub, register save and dispatch, with a handler that runs no program.
    let id = attach(addr, info, ProbeKind::Entry, Arc::new(NoProgram)).expect("attach");
    println!("bpftime_bench_target: vector registers kept: {}", bpftime_attach::site_vectors(addr).unwrap_or_default());
    g.bench_function("bpftime_hook_only", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
    detach(id).expect("detach");
    for (name, kind) in [("empty", ProbeKind::Entry), ("array_update", ProbeKind::Entry), ("empty_ret", ProbeKind::Return)] {
        let id = attach(addr, info, kind, Arc::new(ProgramProbe::new(rt, prog(name), 0, addr, false, Effect::Observe, 0))).expect("attach");
        let label = if kind == ProbeKind::Return { format!("bpftime_uretprobe_{name}") } else { format!("bpftime_uprobe_{name}") };
        g.bench_function(label, |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
        detach(id).expect("detach");
    }
    // The same on a function whose callers rely only on what the ABI keeps.
    let out = bpftime_bench_calls_out as *const () as u64;
    let out_info = bpftime_attach::resolve(&bpftime_attach::Target::parse("/proc/self/exe:bpftime_bench_calls_out").expect("target"))
        .map(|r| SiteInfo { function_size: r.function_size, at_entry: true, padding: r.padding, returns_twice: r.returns_twice })
        .unwrap_or(SiteInfo { function_size: 0, at_entry: true, padding: 0, returns_twice: false });
    g.bench_function("calls_out_no_probe", |b| b.iter(|| black_box(bpftime_bench_calls_out)(black_box(1), 2)));
    let id = attach(out, out_info, ProbeKind::Entry, Arc::new(NoProgram)).expect("attach");
    g.bench_function("calls_out_bpftime_hook_only", |b| b.iter(|| black_box(bpftime_bench_calls_out)(black_box(1), 2)));
    detach(id).expect("detach");
    for (name, kind) in [("empty", ProbeKind::Entry), ("empty_ret", ProbeKind::Return)] {
        let id = attach(out, out_info, kind, Arc::new(ProgramProbe::new(rt, prog(name), 0, out, false, Effect::Observe, 0))).expect("attach");
        g.bench_function(format!("calls_out_bpftime_{name}"), |b| b.iter(|| black_box(bpftime_bench_calls_out)(black_box(1), 2)));
        detach(id).expect("detach");
    }
    // An entry and a return probe on one function, each doing three array updates.
    let entry = attach(addr, info, ProbeKind::Entry, Arc::new(ProgramProbe::new(rt, prog("pair_entry"), 0, addr, false, Effect::Observe, 0))).expect("attach");
    let ret = attach(addr, info, ProbeKind::Return, Arc::new(ProgramProbe::new(rt, prog("pair_return"), 0, addr, false, Effect::Observe, 0))).expect("attach");
    println!("return probes: {} patched ret(s)", bpftime_attach::patched_returns(addr));
    g.bench_function("bpftime_pair_3_updates_each", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
    detach(ret).expect("detach");
    detach(entry).expect("detach");
    // A leaf in a gcc-built C library (integer code: its probes keep few vector registers).
    let lib_path = concat!(env!("OUT_DIR"), "/libbench_leaf.so");
    let lib_name = std::ffi::CString::new(lib_path).expect("path");
    // SAFETY: a plain C library; the handle is never closed.
    let lib = unsafe { libc::dlopen(lib_name.as_ptr(), libc::RTLD_NOW) };
    assert!(!lib.is_null(), "dlopen {lib_path}");
    let leaf = bpftime_attach::resolve(&bpftime_attach::Target::parse(&format!("{lib_path}:bench_leaf")).expect("target")).expect("resolve bench_leaf");
    let leaf_info = SiteInfo { function_size: leaf.function_size, at_entry: true, padding: leaf.padding, returns_twice: false };
    // SAFETY: bench_leaf is `long bench_leaf(long, long)`.
    let leaf_fn: extern "C" fn(u64, u64) -> u64 = unsafe { std::mem::transmute(leaf.addr as usize) };
    let call_leaf = || black_box(leaf_fn)(black_box(1), 2);
    g.bench_function("c_leaf_no_probe", |b| b.iter(call_leaf));
    let id = attach(leaf.addr, leaf_info, ProbeKind::Entry, Arc::new(NoProgram)).expect("attach");
    g.bench_function("c_leaf_bpftime_hook_only", |b| b.iter(call_leaf));
    detach(id).expect("detach");
    for (name, kind) in [("empty", ProbeKind::Entry), ("empty_ret", ProbeKind::Return)] {
        let id = attach(leaf.addr, leaf_info, kind, Arc::new(ProgramProbe::new(rt, prog(name), 0, leaf.addr, false, Effect::Observe, 0))).expect("attach");
        g.bench_function(format!("c_leaf_bpftime_{name}"), |b| b.iter(call_leaf));
        detach(id).expect("detach");
    }
    let entry = attach(leaf.addr, leaf_info, ProbeKind::Entry, Arc::new(ProgramProbe::new(rt, prog("pair_entry"), 0, leaf.addr, false, Effect::Observe, 0)))
        .expect("attach");
    let ret = attach(leaf.addr, leaf_info, ProbeKind::Return, Arc::new(ProgramProbe::new(rt, prog("pair_return"), 0, leaf.addr, false, Effect::Observe, 0)))
        .expect("attach");
    println!(
        "bench_leaf: {} patched ret(s); vector registers kept: {}",
        bpftime_attach::patched_returns(leaf.addr),
        bpftime_attach::site_vectors(leaf.addr).unwrap_or_default()
    );
    g.bench_function("c_leaf_bpftime_pair_3_updates_each", |b| b.iter(call_leaf));
    detach(ret).expect("detach");
    detach(entry).expect("detach");
    // The kernel's uprobe on the same functions, running the same programs.
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    match bpftime_tests::kernel::KernelObject::load(&obj) {
        Ok(mut k) => {
            for (name, ret) in [("empty", false), ("array_update", false), ("empty_ret", true)] {
                match k.attach_uprobe(name, &exe, "bpftime_bench_target", ret) {
                    Ok(()) => {
                        let label = if ret { format!("kernel_uretprobe_{name}") } else { format!("kernel_uprobe_{name}") };
                        g.bench_function(label, |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
                    }
                    Err(e) => println!("skip kernel uprobe `{name}`: {e}"),
                }
                k.detach_all();
            }
            let both = k
                .attach_uprobe("pair_entry", &exe, "bpftime_bench_target", false)
                .and_then(|()| k.attach_uprobe("pair_return", &exe, "bpftime_bench_target", true));
            match both {
                Ok(()) => {
                    g.bench_function("kernel_pair_3_updates_each", |b| b.iter(|| black_box(bpftime_bench_target)(black_box(1), 2)));
                }
                Err(e) => println!("skip the kernel pair: {e}"),
            };
            k.detach_all();
            // The same on the C library's leaf.
            let lib = std::path::Path::new(lib_path);
            match k.attach_uprobe("empty", lib, "bench_leaf", false) {
                Ok(()) => {
                    g.bench_function("c_leaf_kernel_uprobe_empty", |b| b.iter(call_leaf));
                }
                Err(e) => println!("skip the kernel uprobe on bench_leaf: {e}"),
            }
            k.detach_all();
            match k.attach_uprobe("pair_entry", lib, "bench_leaf", false).and_then(|()| k.attach_uprobe("pair_return", lib, "bench_leaf", true)) {
                Ok(()) => {
                    g.bench_function("c_leaf_kernel_pair_3_updates_each", |b| b.iter(call_leaf));
                }
                Err(e) => println!("skip the kernel pair on bench_leaf: {e}"),
            }
            k.detach_all();
        }
        Err(e) => println!("skip kernel uprobes: {e} (needs root and a kernel with uprobes)"),
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
