//! The VM benchmarks of the README: each workload (a C program built both as eBPF and as native
//! code) on our JIT and interpreter, on rbpf's JIT and interpreter, and natively; plus the time
//! to verify and JIT-compile a 1,000-instruction program. Our engines run through a `Runner`
//! kept across runs, as probe hits do (`run`, which sets up a state for each run, is measured
//! on its own in `empty_program`).

use bpftime_benches::{as_bytes, synthetic_alu_program, synthetic_program, workloads};
use bpftime_jit::{JitOptions, JitProgram};
use bpftime_object::Object;
use bpftime_vm::exec::{run, Context, HelperTable, RunOptions, Runner, SharedEngine};
use bpftime_vm::insn::{encode, to_bytecode};
use bpftime_vm::{verify, verify_with, Checks, Interpreter, NoMaps};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn bench_workloads(c: &mut Criterion) {
    for w in workloads() {
        let obj = Object::parse(w.object).expect("workload object parses");
        let code = obj.program(None).expect("one program").insns.clone();
        let bytes = to_bytecode(&code);
        let prog = Arc::new(verify(&code, Arc::new(HelperTable::new()), &NoMaps).expect("verifies"));
        let interp: SharedEngine = Arc::new(Interpreter::new(prog.clone()));
        let compiled = Arc::new(JitProgram::compile(prog).expect("compiles"));
        let code_size = compiled.code_size();
        let jit: SharedEngine = compiled;
        let mut rbpf_interp = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf accepts the program");
        let mut rbpf_jit = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf accepts the program");
        rbpf_jit.jit_compile().expect("rbpf JIT compiles");
        rbpf_interp.set_verifier(|_| Ok(())).ok();

        // Every engine must compute the same result before any is timed.
        let mut mem = w.input.clone();
        // SAFETY: the native workload reads and writes only inside its input, as laid out.
        let want = unsafe { (w.native)(as_bytes(&mut mem).as_mut_ptr()) };
        let opts = RunOptions { budget: u64::MAX, ..RunOptions::default() };
        let mut results = vec![];
        for engine in [&jit, &interp] {
            let mut mem = w.input.clone();
            results.push(run(engine.as_ref(), Context::Mem(as_bytes(&mut mem)), &opts).expect("runs"));
        }
        let mut mem = w.input.clone();
        results.push(rbpf_interp.execute_program(as_bytes(&mut mem)).expect("rbpf runs"));
        let mut mem = w.input.clone();
        // SAFETY: rbpf's JIT code touches only the memory it is given for this program.
        results.push(unsafe { rbpf_jit.execute_program_jit(as_bytes(&mut mem)) }.expect("rbpf JIT runs"));
        assert!(results.iter().all(|&r| r == want), "{}: results differ: native {want}, ours/rbpf {results:?}", w.name);
        println!("{}: result {want:#x}, {} eBPF insns, {} bytes of machine code", w.name, code.len(), code_size);

        let mut g = c.benchmark_group(w.name);
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
        let mut mem = w.input.clone();
        let m = as_bytes(&mut mem);
        // SAFETY: as above.
        g.bench_function("native", |b| b.iter(|| unsafe { (w.native)(black_box(m.as_mut_ptr())) }));
        let mut runner = Runner::new(&[], u64::MAX);
        let none = std::ptr::null_mut();
        g.bench_function("bpftime_jit", |b| b.iter(|| runner.run(&jit, Context::Mem(black_box(&mut *m)), none)));
        g.bench_function("bpftime_interp", |b| b.iter(|| runner.run(&interp, Context::Mem(black_box(&mut *m)), none)));
        // SAFETY: as above.
        g.bench_function("rbpf_jit", |b| b.iter(|| unsafe { rbpf_jit.execute_program_jit(black_box(&mut *m)) }));
        g.bench_function("rbpf_interp", |b| b.iter(|| rbpf_interp.execute_program(black_box(&mut *m))));
        g.finish();
    }
}

fn bench_compile(c: &mut Criterion) {
    let helpers = Arc::new(HelperTable::new());
    // rbpf's JIT writes into a fixed 4 KiB buffer and cannot compile the 1,000-instruction
    // program, so the comparison with it uses a 150-instruction one.
    for len in [1000usize, 150] {
        let code = encode(&synthetic_program(len));
        assert_eq!(code.len(), len);
        let prog = Arc::new(verify(&code, helpers.clone(), &NoMaps).expect("synthetic program verifies"));
        let bytes = to_bytecode(&code);
        let mut g = c.benchmark_group(format!("compile_{len}_insns"));
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        g.bench_function("verify", |b| b.iter(|| verify(black_box(&code), helpers.clone(), &NoMaps).unwrap()));
        for (name, optimize) in [("bpftime_jit_speed", true), ("bpftime_jit_none", false)] {
            g.bench_with_input(BenchmarkId::new(name, len), &optimize, |b, &optimize| {
                b.iter(|| JitProgram::compile_with(prog.clone(), JitOptions { optimize }).unwrap())
            });
        }
        // Where compile time goes: the same program keeping every memory check, and Cranelift's
        // floor, a program as long made of ALU instructions only (no checks, one block).
        let all_checks = Arc::new(verify_with(&code, helpers.clone(), &NoMaps, Checks::All).expect("verifies"));
        g.bench_function("bpftime_jit_speed_all_checks", |b| b.iter(|| JitProgram::compile(all_checks.clone()).unwrap()));
        let alu_only = encode(&synthetic_alu_program(len));
        let alu_only = Arc::new(verify(&alu_only, helpers.clone(), &NoMaps).expect("verifies"));
        g.bench_function("cranelift_floor_alu_only", |b| b.iter(|| JitProgram::compile(alu_only.clone()).unwrap()));
        // The code cache: what a process pays for a program another process compiled (key,
        // entry read, program rebuilt from the record, code mapped), and, once per process,
        // opening the cache; against verifying and compiling it.
        let dir = std::env::temp_dir().join(format!("bpftime-bench-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = bpftime_jit::cache::CodeCache::open(&dir, JitOptions::default()).expect("cache");
        let checks = Checks::Unproven;
        let (_, first) = cache.program(&code, &helpers, &NoMaps, checks).expect("compiles");
        assert_eq!(first, bpftime_jit::cache::Outcome::Stored);
        g.bench_function("code_cache_hit", |b| {
            b.iter(|| {
                let (jit, outcome) = cache.program(black_box(&code), &helpers, &NoMaps, checks).unwrap();
                debug_assert_eq!(outcome, bpftime_jit::cache::Outcome::Hit);
                jit
            })
        });
        g.bench_function("code_cache_open", |b| b.iter(|| bpftime_jit::cache::CodeCache::open(&dir, JitOptions::default()).unwrap()));
        g.bench_function("verify_and_jit", |b| b.iter(|| JitProgram::compile(Arc::new(verify(black_box(&code), helpers.clone(), &NoMaps).unwrap())).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
        // The GPU backend: eBPF to PTX text (ptxas or the driver compiles it afterwards).
        let gpu_helpers = bpftime_gpu_ptx::HelperSet::new();
        g.bench_function("bpftime_to_ptx", |b| b.iter(|| bpftime_gpu_ptx::translate(&prog, &gpu_helpers, &Default::default(), Default::default()).unwrap()));
        if len <= 150 {
            g.bench_function("rbpf_jit", |b| {
                b.iter(|| {
                    let mut vm = rbpf::EbpfVmRaw::new(Some(&bytes)).unwrap();
                    vm.jit_compile().unwrap();
                    vm
                })
            });
        }
        g.finish();
    }
}

/// The fixed cost of one run: `r0 = 0; exit`.
fn bench_run_overhead(c: &mut Criterion) {
    let code = bpftime_vm::asm::assemble("r0 = 0\nexit").expect("assembles");
    let bytes = to_bytecode(&code);
    let prog = Arc::new(verify(&code, Arc::new(HelperTable::new()), &NoMaps).expect("verifies"));
    let jit: SharedEngine = Arc::new(JitProgram::compile(prog.clone()).expect("compiles"));
    let interp: SharedEngine = Arc::new(Interpreter::new(prog));
    let mut rbpf_jit = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf accepts");
    rbpf_jit.jit_compile().expect("rbpf JIT compiles");
    let opts = RunOptions::default();
    let mut mem = [0u8; 64];
    let mut g = c.benchmark_group("empty_program");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut runner = Runner::new(&[], opts.budget);
    let none = std::ptr::null_mut();
    g.bench_function("bpftime_jit", |b| b.iter(|| runner.run(&jit, Context::Mem(black_box(&mut mem)), none)));
    g.bench_function("bpftime_interp", |b| b.iter(|| runner.run(&interp, Context::Mem(black_box(&mut mem)), none)));
    // A state and a stack set up for each run.
    g.bench_function("bpftime_jit_run", |b| b.iter(|| run(jit.as_ref(), Context::Mem(black_box(&mut mem)), &opts)));
    // SAFETY: the program touches no memory.
    g.bench_function("rbpf_jit", |b| b.iter(|| unsafe { rbpf_jit.execute_program_jit(black_box(&mut mem)) }));
    g.finish();
}

criterion_group!(benches, bench_run_overhead, bench_workloads, bench_compile);
criterion_main!(benches);
