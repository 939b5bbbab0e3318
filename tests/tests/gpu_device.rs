//! The GPU is the final word: the same checks as `gpu_ptx.rs`, on a real device. Skipped, with
//! the reason printed, where there is no GPU (`scripts/gpu-check.sh` runs them where there is).

use bpftime_cuda::{Device, GpuRunResult};
use bpftime_gpu_ptx::{translate, HelperSet, LddwMaps, Target};
use bpftime_runtime::gpu::host_words;
use bpftime_tests::conformance_vectors;
use bpftime_vm::exec::{run, Context, RunOptions, DEFAULT_LOOP_BUDGET};
use bpftime_vm::{conformance, verify_bytecode, Fault, Interpreter, NoMaps, RunError};
use std::sync::Arc;

fn device() -> Option<(Device, Target)> {
    match Device::open(0).and_then(|d| d.info().map(|i| (d, i))) {
        Ok((d, info)) => {
            println!("device: {} (sm_{}, {} SMs)", info.name, info.sm, info.sms);
            Some((d, Target::sm(info.sm.clamp(75, 120))))
        }
        Err(e) => {
            println!("skipping: no GPU ({e})");
            None
        }
    }
}

fn shape(r: &Result<u64, RunError>) -> String {
    match r {
        Ok(v) => format!("ok {v:#x}"),
        Err(e) => match e.fault {
            Fault::OutOfBounds { size, write, .. } => format!("insn {}: out of bounds {size} {write}", e.insn),
            Fault::Misaligned { size, .. } => format!("insn {}: misaligned {size}", e.insn),
            f => format!("insn {}: {f:?}", e.insn),
        },
    }
}

fn on_device(dev: &Device, ptx: &str, mem: &[u8], threads: u32, budget: u64) -> GpuRunResult {
    bpftime_cuda::run(dev, ptx, &[], mem, threads, budget, host_words()).unwrap_or_else(|e| panic!("{e}\n{ptx}"))
}

#[test]
fn conformance_vectors_on_the_device() {
    let Some((dev, target)) = device() else { return };
    let Some(vectors) = conformance_vectors() else {
        println!("skipping: no conformance vectors (set BPFTIME_CONFORMANCE_DIR)");
        return;
    };
    let mut failures = vec![];
    for v in &vectors {
        let Ok(prog) = verify_bytecode(&v.program, Arc::new(conformance::helper_table()), &NoMaps) else { continue };
        let prog = Arc::new(prog);
        let mut mem = v.mem.clone();
        let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
        let want = run(&Interpreter::new(prog.clone()), ctx, &RunOptions::default());
        let ptx = translate(&prog, &HelperSet::conformance(), &LddwMaps::default(), target).unwrap();
        let got = on_device(&dev, &ptx, &v.mem, 1, DEFAULT_LOOP_BUDGET);
        if shape(&got.outcomes[0]) != shape(&want) {
            failures.push(format!("{}: device {}, interpreter {}", v.name, shape(&got.outcomes[0]), shape(&want)));
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), vectors.len(), failures.join("\n"));
    println!("all {} vectors agree on the device", vectors.len());
}

/// Random programs on the device and on the PTX interpreter with the context and the stack
/// where the device had them: a program may compute with addresses (compare `w1` with a
/// constant, add a pointer into memory and loop on it), so only the same addresses give the same
/// outcome. `gpu_ptx.rs` checks the PTX interpreter against the CPU interpreter the same way, at
/// the CPU's addresses, so the device agrees with the CPU through it.
#[test]
fn random_programs_on_the_device() {
    use bpftime_tests::datatest::test_helpers;
    use bpftime_tests::gpu::{run_on_ptx_interpreter_at, test_helper_set, Placement};
    use bpftime_tests::progen::program_without_lookups as program;
    use bpftime_vm::insn::to_bytecode;
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let Some((dev, target)) = device() else { return };
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let n = 1000;
    let mut failures = vec![];
    for i in 0..n {
        let g = strategy.new_tree(&mut runner).expect("value").current();
        let prog = Arc::new(verify_bytecode(&to_bytecode(&g.bytecode()), Arc::new(test_helpers()), &NoMaps).expect("verifies"));
        let ptx = translate(&prog, &test_helper_set(), &LddwMaps::default(), target).unwrap();
        let got = on_device(&dev, &ptx, &g.mem, 1, 500);
        let at = got.addresses[0];
        let want = run_on_ptx_interpreter_at(&prog, &test_helper_set(), &g.mem, 500, Placement { ctx: Some(at.ctx), stack: Some(at.stack) })
            .map(|r| shape(&r.result))
            .unwrap_or_else(|e| format!("PTX interpreter: {e}"));
        if shape(&got.outcomes[0]) != want {
            failures.push(format!("program {i} (context {:#x}, stack {:#x}): device {}, PTX interpreter {want}", at.ctx, at.stack, shape(&got.outcomes[0])));
        }
    }
    assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
    println!("{n} random programs agree on the device and the PTX interpreter at the device's addresses");
}

#[test]
fn maps_on_the_device_with_many_threads() {
    use bpftime_object::Object;
    let Some((dev, target)) = device() else { return };
    let obj = Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_maps")).unwrap()).unwrap();
    let info = dev.info().unwrap();
    let g = bpftime_runtime::gpu::gpu_program(&obj, None, target, info.sms).unwrap();
    let threads = 1 << 14;
    let n = 7u64;
    let mut r = bpftime_cuda::run(&dev, &g.ptx, &g.arena, &n.to_le_bytes(), threads, DEFAULT_LOOP_BUDGET, host_words()).unwrap();
    g.layout.fold_shards(&mut r.arena);
    assert!(r.outcomes.iter().all(|o| o.is_ok()), "every thread ran: {:?}", r.outcomes.iter().find(|o| o.is_err()));
    let counts = g.layout.entries(&r.arena, 0);
    for (i, (_, v)) in counts.iter().enumerate().take(15) {
        let got = u64::from_le_bytes(v[0][..8].try_into().unwrap());
        assert_eq!(got, threads as u64 * (i as u64 + n), "counts[{i}]: every thread's atomic add");
    }
    let (records, lost) = g.layout.records(&r.arena, g.layout.maps.iter().position(|m| m.spec.name == "events").unwrap());
    assert_eq!(records.len() as u64 + lost, 2 * threads as u64, "every record arrived or was counted lost");
    println!("{threads} threads in {:.1} us", r.micros);
}

/// The crowds of `gpu_crowd.bpf.c` (as `gpu_ptx.rs` runs them interleaved on the PTX
/// interpreter) on the device's real concurrency, 16,384 threads: a hash of 8 filled by
/// threads inserting its 8 keys, plain increments of one value and of per-SM slots losing
/// nothing, ring records arriving once or counted lost.
#[test]
fn crowds_on_the_device() {
    use bpftime_object::Object;
    let Some((dev, target)) = device() else { return };
    let info = dev.info().unwrap();
    let obj = Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_crowd")).unwrap()).unwrap();
    let threads = 1u32 << 14;
    let run = |name: &str| {
        let g = bpftime_runtime::gpu::gpu_program(&obj, Some(name), target, info.sms).unwrap();
        let mut r = bpftime_cuda::run(&dev, &g.ptx, &g.arena, &[], threads, DEFAULT_LOOP_BUDGET, host_words()).unwrap();
        g.layout.fold_shards(&mut r.arena);
        assert!(r.outcomes.iter().all(|o| *o == Ok(0)), "{name}: {:?}", r.outcomes.iter().find(|o| **o != Ok(0)));
        (g, r.arena)
    };
    let values = |g: &bpftime_runtime::gpu::GpuProgram, arena: &[u8], name: &str| -> Vec<(Vec<u8>, Vec<u64>)> {
        let map = g.layout.maps.iter().position(|m| m.spec.name == name).unwrap();
        g.layout.entries(arena, map).into_iter().map(|(k, vs)| (k, vs.iter().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).collect())).collect()
    };
    let (g, arena) = run("insert_few_keys");
    let mut keys: Vec<(u32, u64)> = values(&g, &arena, "crowd").into_iter().map(|(k, v)| (u32::from_le_bytes(k[..4].try_into().unwrap()), v[0])).collect();
    keys.sort();
    assert_eq!(keys, (0..8).map(|k| (k, threads as u64 / 8)).collect::<Vec<_>>(), "each key once, with its threads' adds");
    let (g, arena) = run("take_ticket");
    assert_eq!(values(&g, &arena, "tickets")[0].1, vec![threads as u64], "every thread's increment");
    assert!(values(&g, &arena, "taken").iter().all(|(_, v)| v[0] == 1), "the first 1,024 tickets each taken once");
    let (g, arena) = run("count_per_cpu");
    assert_eq!(values(&g, &arena, "per_cpu")[0].1.iter().sum::<u64>(), threads as u64, "per-SM slots: every thread's increment");
    let (g, arena) = run("record_thread");
    let ring = |name: &str| {
        let slot = g.layout.maps.iter().position(|m| m.spec.name == name).unwrap();
        let (records, lost) = g.layout.records(&arena, slot);
        let mut ids: Vec<u32> = records.iter().map(|(_, r)| u32::from_le_bytes(r[..4].try_into().unwrap())).collect();
        ids.sort();
        (ids, lost)
    };
    assert_eq!(ring("big_ring"), ((0..threads).collect::<Vec<u32>>(), 0), "a ring that holds them all");
    let (ids, lost) = ring("small_ring");
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids.len() as u64 + lost == threads as u64, "{} records, {lost} lost", ids.len());
    println!("{threads} threads: crowds exact; small ring {} records, {lost} lost", ids.len());
}

/// The GPU benchmark table, printed where there is a GPU and `BPFTIME_GPU_BENCH=1` asks for it
/// (`scripts/gpu-check.sh` does; it takes minutes): kernel time per thread of each program of
/// `gpu_bench.bpf.c` at 2^18 and 2^24 threads, best of 5, next to a floor: the same kernel with
/// the program replaced by hand-written PTX returning at once. Every run checks that each
/// program translates for the GPU.
#[test]
fn gpu_benchmarks() {
    use bpftime_object::Object;
    let obj = Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_bench")).unwrap()).unwrap();
    for name in ["empty", "array_update", "hash_lookup", "counter_add", "ringbuf"] {
        bpftime_runtime::gpu::gpu_program(&obj, Some(name), Target::default(), 1).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    if std::env::var_os("BPFTIME_GPU_BENCH").is_none() {
        println!("benchmark table not printed: set BPFTIME_GPU_BENCH=1 (scripts/gpu-check.sh does)");
        return;
    }
    let Some((dev, target)) = device() else { return };
    let info = dev.info().unwrap();
    println!("| program | threads | kernel time | ns/thread over the floor |");
    println!("| --- | ---: | ---: | ---: |");
    for threads in [1u32 << 18, 1 << 24] {
        let mut floor = f64::MAX;
        for (name, shard) in
            [("empty", false), ("array_update", false), ("hash_lookup", false), ("counter_add", false), ("counter_add", true), ("ringbuf", false)]
        {
            let g = bpftime_runtime::gpu::gpu_program(&obj, Some(name), Target { shard_atomic_adds: shard, ..target }, info.sms).unwrap();
            let label = if shard { format!("{name} (per-SM shards)") } else { name.to_string() };
            let ptx = if name == "empty" {
                // The floor: bpf_f0 returns 0 without the translated prologue.
                let start = g.ptx.find(".func (.reg .b64 %ret) bpf_f0(").and_then(|i| g.ptx[i..].find('{').map(|j| i + j)).unwrap();
                let end = start + g.ptx[start..].find("\n}\n").unwrap() + 3;
                format!("{}{{\nmov.b64 %ret, 0;\nret;\n}}\n{}", &g.ptx[..start], &g.ptx[end..])
            } else {
                g.ptx.clone()
            };
            let best = |ptx: &str| {
                (0..5).map(|_| bpftime_cuda::run(&dev, ptx, &g.arena, &[], threads, 1 << 20, host_words()).unwrap().micros).fold(f64::MAX, f64::min)
            };
            if name == "empty" {
                floor = best(&ptx);
                println!("| floor (no program) | {threads} | {floor:.1} us | |");
            }
            let t = best(&g.ptx);
            println!("| {label} | {threads} | {t:.1} us | {:.2} |", (t - floor) * 1000.0 / threads as f64);
        }
    }
}
