//! The GPU backend against the interpreter, without a GPU: every program is translated to PTX
//! and the PTX is executed by the PTX-subset interpreter; r0, faults and memory must match the
//! eBPF interpreter's. Covers the 313 conformance vectors, the data-driven cases and random
//! programs.

use bpftime_gpu_ptx::HelperSet;
use bpftime_tests::gpu::run_on_ptx_interpreter;
use bpftime_tests::{conformance_vectors, Vector};
use bpftime_vm::exec::{run, Context, RunOptions, DEFAULT_LOOP_BUDGET};
use bpftime_vm::{conformance, verify_bytecode, Fault, Interpreter, NoMaps, RunError};
use std::sync::Arc;

/// Faults compared without addresses (the GPU's stack and context live elsewhere).
fn shape(r: &Result<u64, RunError>) -> String {
    match r {
        Ok(v) => format!("ok {v:#x}"),
        Err(e) => {
            let f = match e.fault {
                Fault::OutOfBounds { size, write, .. } => format!("out of bounds {size} {write}"),
                Fault::Misaligned { size, .. } => format!("misaligned {size}"),
                f => format!("{f:?}"),
            };
            format!("insn {}: {f}", e.insn)
        }
    }
}

fn check_vector(v: &Vector) -> Result<(), String> {
    let helpers = Arc::new(conformance::helper_table());
    let prog = Arc::new(verify_bytecode(&v.program, helpers, &NoMaps).map_err(|e| format!("verifier: {e}"))?);
    let mut mem = v.mem.clone();
    let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
    let want = run(&Interpreter::new(prog.clone()), ctx, &RunOptions::default());
    let got = run_on_ptx_interpreter(&prog, &HelperSet::conformance(), &v.mem, DEFAULT_LOOP_BUDGET)?;
    if shape(&got.result) != shape(&want) {
        return Err(format!("PTX gave {}, the interpreter {}", shape(&got.result), shape(&want)));
    }
    if got.mem != mem {
        return Err("memory differs after the run".into());
    }
    Ok(())
}

#[test]
fn conformance_vectors_on_the_ptx_interpreter() {
    let Some(vectors) = conformance_vectors() else {
        println!("skip: no conformance vectors at {}", bpftime_tests::conformance_dir().display());
        return;
    };
    let failures: Vec<String> = vectors.iter().filter_map(|v| check_vector(v).err().map(|e| format!("{}: {e}", v.name))).collect();
    assert!(failures.is_empty(), "{} of {} vectors differ:\n{}", failures.len(), vectors.len(), failures.join("\n\n"));
    println!("all {} vectors agree", vectors.len());
}

#[test]
fn data_driven_cases_on_the_ptx_interpreter() {
    use bpftime_tests::datatest::{load_cases, test_helpers};
    use bpftime_tests::gpu::test_helper_set;
    let cases = load_cases(&bpftime_tests::repo_root().join("tests/data/vm"));
    let gpu_helpers = test_helper_set();
    let mut failures = vec![];
    let mut compared = 0;
    for case in &cases {
        let Ok(prog) = verify_bytecode(&case.program, Arc::new(test_helpers()), &NoMaps) else { continue };
        let prog = Arc::new(prog);
        let budget = case.budget.unwrap_or(DEFAULT_LOOP_BUDGET);
        let mut mem = case.mem.clone();
        let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
        let want = run(&Interpreter::new(prog.clone()), ctx, &RunOptions { budget, ..RunOptions::default() });
        match run_on_ptx_interpreter(&prog, &gpu_helpers, &case.mem, budget) {
            Ok(got) if shape(&got.result) == shape(&want) && got.mem == mem => compared += 1,
            Ok(got) => {
                failures.push(format!("{}: PTX gave {} (memory same: {}), the interpreter {}", case.name, shape(&got.result), got.mem == mem, shape(&want)))
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
    assert!(compared > 100, "{compared} cases compared");
}

/// Random programs (the differential generator): the PTX must agree with the interpreter on
/// r0, memory and faults, fault addresses included: the PTX run gets its context and stack at
/// the addresses the interpreter's run had.
#[test]
fn random_programs_agree_with_the_interpreter() {
    use bpftime_tests::datatest::test_helpers;
    use bpftime_tests::gpu::{cpu_stack_bottom, run_on_ptx_interpreter_at, test_helper_set, Placement};
    use bpftime_tests::progen::program_without_lookups as program;
    use bpftime_vm::insn::to_bytecode;
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let gpu_helpers = test_helper_set();
    let n: usize = std::env::var("BPFTIME_GPU_RANDOM").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let stack = cpu_stack_bottom();
    // The PTX kernel's state block sits just below the stack: keep buffers away from it.
    let local = (stack - bpftime_gpu_ptx::state::STATE_SIZE as u64)..(stack + bpftime_gpu_ptx::state::STACK_SIZE as u64);
    // Whether a buffer overlaps that window.
    let near_stack = |b: &[u8]| (b.as_ptr() as u64) < local.end && local.start < b.as_ptr() as u64 + b.len().max(1) as u64;
    let mut failures = vec![];
    let mut keep = vec![];
    for i in 0..n {
        let g = strategy.new_tree(&mut runner).expect("value").current();
        let code = to_bytecode(&g.bytecode());
        let prog = Arc::new(verify_bytecode(&code, Arc::new(test_helpers()), &NoMaps).expect("verifies"));
        let mut mem = g.mem.clone();
        while near_stack(&mem) {
            keep.push(std::mem::replace(&mut mem, g.mem.clone()));
        }
        let want = run(&Interpreter::new(prog.clone()), Context::Mem(&mut mem), &RunOptions { budget: 500, ..RunOptions::default() });
        assert_eq!(cpu_stack_bottom(), stack, "the interpreter's stack moved");
        let at = Placement { ctx: Some(mem.as_ptr() as u64), stack: Some(stack) };
        match run_on_ptx_interpreter_at(&prog, &gpu_helpers, &g.mem, 500, at) {
            Ok(got) if got.result == want && got.mem == mem => {}
            Ok(got) => failures.push(format!(
                "program {i}: PTX gave {:?} (memory same: {}), the interpreter {want:?}\n{}",
                got.result,
                got.mem == mem,
                bpftime_vm::disasm::disassemble(&bpftime_vm::insn::decode(&g.bytecode()).unwrap())
            )),
            Err(e) => failures.push(format!("program {i}: {e}")),
        }
        // Every fourth program again with its context at an odd address (the GPU's fast
        // context loads assume an 8-aligned one and must fall back).
        if i % 4 == 0 && !g.mem.is_empty() {
            let mut odd = vec![0u8; g.mem.len() + 1];
            odd[1..].copy_from_slice(&g.mem);
            while near_stack(&odd) {
                keep.push(std::mem::replace(&mut odd, vec![0u8; g.mem.len() + 1]));
                odd[1..].copy_from_slice(&g.mem);
            }
            let want = run(&Interpreter::new(prog.clone()), Context::Mem(&mut odd[1..]), &RunOptions { budget: 500, ..RunOptions::default() });
            let at = Placement { ctx: Some(odd.as_ptr() as u64 + 1), stack: Some(stack) };
            match run_on_ptx_interpreter_at(&prog, &gpu_helpers, &g.mem, 500, at) {
                Ok(got) if got.result == want && got.mem == odd[1..] => {}
                Ok(got) => failures.push(format!("program {i} (odd context): PTX gave {:?}, the interpreter {want:?}", got.result)),
                Err(e) => failures.push(format!("program {i} (odd context): {e}")),
            }
        }
        if failures.len() >= 5 {
            break;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
    println!("{n} random programs agree");
}

/// ptxas accepts the PTX of every conformance vector and data-driven case for sm_75, sm_80 and
/// sm_90 (the target each module names).
#[test]
fn ptxas_accepts_every_translated_program() {
    use bpftime_gpu_ptx::{translate, Target};
    use bpftime_tests::cuda_tools::{ptxas_accepts, ptxas_or_skip};
    use bpftime_tests::datatest::{load_cases, test_helpers};
    let Some(ptxas) = ptxas_or_skip("the ptxas acceptance test") else { return };
    let mut modules: Vec<(String, Arc<bpftime_vm::Program>, HelperSet)> = vec![];
    for v in conformance_vectors().unwrap_or_default() {
        if let Ok(p) = verify_bytecode(&v.program, Arc::new(conformance::helper_table()), &NoMaps) {
            modules.push((v.name.clone(), Arc::new(p), HelperSet::conformance()));
        }
    }
    for case in load_cases(&bpftime_tests::repo_root().join("tests/data/vm")) {
        if let Ok(p) = verify_bytecode(&case.program, Arc::new(test_helpers()), &NoMaps) {
            modules.push((case.name.clone(), Arc::new(p), bpftime_tests::gpu::test_helper_set()));
        }
    }
    let scratch = bpftime_tests::repo_root().join("target/ptxas-test");
    std::fs::create_dir_all(&scratch).unwrap();
    // Every program of every example object that can run on the GPU (the others must say
    // which instruction stops them).
    let mut example_jobs: Vec<(String, String, u32)> = vec![];
    let mut refused = vec![];
    for name in bpftime_tests::clang::example_names() {
        let obj = bpftime_object::Object::parse(&std::fs::read(bpftime_tests::clang::build_example(&name)).unwrap()).unwrap();
        for p in &obj.programs {
            for sm in [75, 80, 90] {
                match bpftime_runtime::gpu::gpu_program(&obj, Some(&p.name), Target::sm(sm), 4) {
                    Ok(g) => example_jobs.push((format!("{name}/{}", p.name), g.ptx, sm)),
                    Err(e) => {
                        assert!(e.contains("insn ") || e.contains("cannot live on the GPU"), "{name}/{}: unclear refusal: {e}", p.name);
                        refused.push(e);
                    }
                }
            }
        }
    }
    assert!(example_jobs.iter().any(|j| j.0.starts_with("gpu_maps/")), "gpu_maps translates");
    println!("{} example modules, {} refused for the GPU with a reason", example_jobs.len(), refused.len());
    let jobs: Vec<(String, String, u32)> = modules
        .iter()
        .flat_map(|(name, p, h)| {
            [75, 80, 90].into_iter().map(move |sm| (name.clone(), translate(p, h, &Default::default(), Target::sm(sm)).expect("translates"), sm))
        })
        .chain(example_jobs)
        .collect();
    let failures = std::sync::Mutex::new(vec![]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, ptx, sm)) = jobs.get(i) else { break };
                if let Err(e) = ptxas_accepts(&ptxas, ptx, *sm, &scratch) {
                    failures.lock().unwrap().push(format!("{name}: {e}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} modules refused:\n{}", failures.len(), jobs.len(), failures.join("\n"));
    println!("ptxas accepted {} modules", jobs.len());
}

/// A clang-built program using maps, a ring buffer and bpf_loop: the PTX (with its maps in a
/// device arena) and the CPU interpreter must leave the same maps and return the same r0.
#[test]
fn maps_and_helpers_agree_with_the_cpu() {
    use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
    use bpftime_gpu_ptx::{state, Target, RUN_KERNEL, RUN_OUT_STRIDE};
    use bpftime_maps::Map;
    use bpftime_object::Object;
    use bpftime_runtime::{EngineKind, Runtime};
    use bpftime_shm::ShmRegion;
    let obj = Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_maps")).unwrap()).unwrap();
    let n = 7u64;
    // CPU.
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Interp);
    let loaded = rt.load_object(&obj).unwrap();
    let prog = rt.program(loaded.programs[0].2).unwrap();
    let mut ctx = n.to_le_bytes().to_vec();
    let cpu_r0 = rt.run(&prog, Context::Mem(&mut ctx), 0, 0, false).expect("runs on the CPU");
    let map = |name: &str| loaded.maps.iter().find(|m: &&Map| m.name() == name).unwrap().clone();
    let cpu_counts: Vec<Vec<u8>> = (0..16u32)
        .map(|i| {
            let mut v = vec![0u8; 8];
            map("counts").lookup(&i.to_le_bytes(), &mut v).unwrap();
            v
        })
        .collect();
    let mut cpu_pairs: Vec<(Vec<u8>, Vec<u8>)> = map("pairs")
        .keys()
        .into_iter()
        .map(|k| {
            let mut v = vec![0u8; 16];
            map("pairs").lookup(&k, &mut v).unwrap();
            (k, v)
        })
        .collect();
    cpu_pairs.sort();
    let mut cpu_events = vec![];
    map("events").ringbuf_consume(&mut |r| cpu_events.push(r.to_vec()));
    // GPU, on the PTX interpreter.
    let gpu = bpftime_runtime::gpu::gpu_program(&obj, None, Target::default(), 4).expect("prepares for the GPU");
    let mut m = Machine::new(Module::parse(&gpu.ptx).unwrap());
    let arena = m.memory.alloc(gpu.layout.size);
    m.memory.write(arena, &gpu.arena).unwrap();
    let ctx = m.memory.alloc(8);
    m.memory.write(ctx, &n.to_le_bytes()).unwrap();
    let out = m.memory.alloc(RUN_OUT_STRIDE);
    m.launch(RUN_KERNEL, &[ctx, 8, arena, gpu.layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, 1], Launch::default()).unwrap_or_else(|e| panic!("{e}"));
    let raw = m.memory.read(out, RUN_OUT_STRIDE).unwrap();
    let gpu_r0 = state::outcome(&raw[8..], u64::from_le_bytes(raw[..8].try_into().unwrap())).expect("runs on the GPU");
    assert_eq!(gpu_r0, cpu_r0, "r0");
    let mut image = m.memory.read(arena, gpu.layout.size).unwrap();
    gpu.layout.fold_shards(&mut image);
    let slot = |name: &str| gpu.layout.maps.iter().position(|p| p.spec.name == name).unwrap();
    let gpu_counts: Vec<Vec<u8>> = gpu.layout.entries(&image, slot("counts")).into_iter().map(|(_, v)| v[0].clone()).collect();
    assert_eq!(gpu_counts, cpu_counts, "counts");
    let mut gpu_pairs: Vec<(Vec<u8>, Vec<u8>)> = gpu.layout.entries(&image, slot("pairs")).into_iter().map(|(k, v)| (k, v[0].clone())).collect();
    gpu_pairs.sort();
    assert_eq!(gpu_pairs, cpu_pairs, "pairs");
    let (records, lost) = gpu.layout.records(&image, slot("events"));
    assert_eq!(records.into_iter().map(|r| r.1).collect::<Vec<_>>(), cpu_events, "ring buffer records");
    assert_eq!(lost, 0);
    let per_sm: u64 = gpu.layout.entries(&image, slot("per_cpu"))[0].1.iter().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).sum();
    assert_eq!(per_sm, 1, "one per-SM slot incremented");
    println!("r0 = {cpu_r0} on both; counts[15] = {}", u64::from_le_bytes(cpu_counts[15][..8].try_into().unwrap()));
}

/// `shard_atomic_adds`: a hot counter's adds land in per-SM shards (the array itself untouched
/// during the launch), and folding them gives the exact total.
#[test]
fn sharded_counter_adds_fold_to_the_exact_total() {
    use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
    use bpftime_gpu_ptx::{Target, RUN_KERNEL, RUN_OUT_STRIDE};
    let obj = bpftime_object::Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_bench")).unwrap()).unwrap();
    let target = Target { shard_atomic_adds: true, ..Target::default() };
    let g = bpftime_runtime::gpu::gpu_program(&obj, Some("counter_add"), target, 4).unwrap();
    assert!(g.ptx.contains("red.global.add.u64"), "the add is sharded");
    let mut m = Machine::new(Module::parse(&g.ptx).unwrap());
    let arena = m.memory.alloc(g.layout.size);
    m.memory.write(arena, &g.arena).unwrap();
    let (blocks, threads) = (3u32, 64u32);
    let out = m.memory.alloc(RUN_OUT_STRIDE * (blocks * threads) as u64);
    let ctx = m.memory.alloc(1);
    m.launch(
        RUN_KERNEL,
        &[ctx, 0, arena, g.layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, (blocks * threads) as u64],
        Launch::linear(blocks, threads, 4),
    )
    .unwrap();
    let mut image = m.memory.read(arena, g.layout.size).unwrap();
    let counter = |image: &[u8]| u64::from_le_bytes(g.layout.entries(image, 0)[0].1[0][..8].try_into().unwrap());
    assert_eq!(counter(&image), 0, "the shared counter itself is not touched during the launch");
    g.layout.fold_shards(&mut image);
    assert_eq!(counter(&image), (blocks * threads) as u64, "every thread's add, after the fold");
    g.layout.fold_shards(&mut image);
    assert_eq!(counter(&image), (blocks * threads) as u64, "folding twice adds nothing");
}

/// Runs program `name` of `gpu_crowd` on `blocks` blocks (on 4 SMs) of `threads` interleaved
/// threads (as on a GPU) on the PTX interpreter: each thread's outcome, and the arena after.
fn crowd(name: &str, blocks: u32, threads: u32) -> (bpftime_runtime::gpu::GpuProgram, Vec<Result<u64, RunError>>, Vec<u8>) {
    let (g, outcomes, image, _) = crowd_counting_atoms(name, blocks, threads);
    (g, outcomes, image)
}

/// [`crowd`], and how many `atom` instructions ran.
fn crowd_counting_atoms(name: &str, blocks: u32, threads: u32) -> (bpftime_runtime::gpu::GpuProgram, Vec<Result<u64, RunError>>, Vec<u8>, u64) {
    use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
    use bpftime_gpu_ptx::{state, Target, RUN_KERNEL, RUN_OUT_STRIDE};
    let obj = bpftime_object::Object::parse(&std::fs::read(bpftime_tests::clang::build_example("gpu_crowd")).unwrap()).unwrap();
    let g = bpftime_runtime::gpu::gpu_program(&obj, Some(name), Target::default(), 4).unwrap();
    let mut m = Machine::new(Module::parse(&g.ptx).unwrap());
    let arena = m.memory.alloc(g.layout.size);
    m.memory.write(arena, &g.arena).unwrap();
    let all = (blocks * threads) as u64;
    let out = m.memory.alloc(RUN_OUT_STRIDE * all);
    let ctx = m.memory.alloc(1);
    m.launch(RUN_KERNEL, &[ctx, 0, arena, g.layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, all], Launch::linear(blocks, threads, 4))
        .unwrap_or_else(|e| panic!("{e}"));
    let raw = m.memory.read(out, RUN_OUT_STRIDE * all).unwrap();
    let outcomes = raw.chunks_exact(RUN_OUT_STRIDE as usize).map(|c| state::outcome(&c[8..], u64::from_le_bytes(c[..8].try_into().unwrap()))).collect();
    let image = m.memory.read(arena, g.layout.size).unwrap();
    (g, outcomes, image, m.atoms)
}

/// 256 threads of a block inserting 8 keys into a hash of 8: one thread per key takes a slot
/// and counts it, so no insert reads the map as full (a count reserved by every thread before
/// claiming did: whole blocks' keys were missing on an H200), and every thread's add lands in
/// its key's entry.
#[test]
fn a_crowd_inserting_a_few_keys_fills_the_hash_exactly() {
    let (g, outcomes, image) = crowd("insert_few_keys", 1, 256);
    assert_eq!(outcomes.iter().filter(|o| **o != Ok(0)).count(), 0, "threads whose insert or lookup failed");
    let mut entries: Vec<(u32, u64)> = g
        .layout
        .entries(&image, 0)
        .iter()
        .map(|(k, v)| (u32::from_le_bytes(k[..4].try_into().unwrap()), u64::from_le_bytes(v[0][..8].try_into().unwrap())))
        .collect();
    entries.sort();
    assert_eq!(entries, (0..8).map(|k| (k, 32)).collect::<Vec<_>>(), "each key once, with its 32 threads' adds");
    let count_at = g.layout.hash_count_offset(0) as usize;
    assert_eq!(u64::from_le_bytes(image[count_at..count_at + 8].try_into().unwrap()), 8, "the entry count");
}

/// A value incremented with plain loads and stores by 256 interleaved threads: each
/// increment is one atomic add on the GPU, so every thread's lands, and a thread that returns
/// the sum it stored returns a distinct one (1 to 256); a per-CPU slot (one per SM, shared by
/// the SM's threads) incremented with `*v += 1` counts every thread.
#[test]
fn plain_increments_by_a_crowd_lose_nothing() {
    // Each entry's value slots (one, or one per SM).
    let values = |g: &bpftime_runtime::gpu::GpuProgram, image: &[u8], name: &str| -> Vec<Vec<u64>> {
        let map = g.layout.maps.iter().position(|m| m.spec.name == name).unwrap();
        g.layout.entries(image, map).iter().map(|(_, vs)| vs.iter().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).collect()).collect()
    };
    let (g, outcomes, image) = crowd("take_ticket", 1, 256);
    assert!(g.ptx.contains("atom.global.add.u64"), "the increment is an atomic add whose result is read");
    assert!(outcomes.iter().all(|o| *o == Ok(0)));
    assert_eq!(values(&g, &image, "tickets")[0], vec![256]);
    let taken: Vec<u64> = values(&g, &image, "taken").iter().map(|v| v[0]).collect();
    assert_eq!(taken, [vec![1; 256], vec![0; 768]].concat(), "every thread took a ticket of its own");
    let (g, outcomes, image) = crowd("count_per_cpu", 1, 256);
    assert!(g.ptx.contains("red.global.add.u64"), "the increment is a reduction (its sum is not read)");
    assert!(outcomes.iter().all(|o| *o == Ok(0)));
    assert_eq!(values(&g, &image, "per_cpu")[0].iter().sum::<u64>(), 256, "per-SM slots: every thread's increment");
}

/// 1,024 threads on 4 SMs writing a record each: SMs take chunks of the ring and their
/// threads reserve records from them (interleaved, as on a GPU), and every record arrives once
/// (a ring big enough) or is counted lost (one too small), none twice, none torn. The lanes of
/// a warp reserve together: one atomic on the cursor for the warp, not one a record.
#[test]
fn ring_records_from_many_threads_arrive_once_or_are_counted_lost() {
    let (g, outcomes, image, atoms) = crowd_counting_atoms("record_thread", 4, 256);
    // 2,048 records: 32 warps reserving on two rings (about 180 with chunks taken and
    // retries; one a record, without sharing, is 2,048 at least).
    assert!(atoms < 256, "{atoms} atomics for 2,048 records");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{:?}", outcomes.iter().find(|o| o.is_err()));
    let ring = |name: &str| {
        let slot = g.layout.maps.iter().position(|m| m.spec.name == name).unwrap();
        assert!(g.layout.maps[slot].capacity > 0, "`{name}` is served in chunks");
        let (records, lost) = g.layout.records(&image, slot);
        let mut ids: Vec<u32> = records.iter().map(|(_, r)| u32::from_le_bytes(r[..4].try_into().unwrap())).collect();
        ids.sort();
        (ids, lost)
    };
    let (ids, lost) = ring("big_ring");
    assert_eq!((ids, lost), ((0..1024).collect::<Vec<u32>>(), 0), "a ring that holds them all");
    let (ids, lost) = ring("small_ring");
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "no record twice");
    assert!(ids.iter().all(|&i| i < 1024));
    assert_eq!(ids.len() as u64 + lost, 1024, "every record arrived or was counted lost");
    assert!(ids.len() >= 128 && lost > 0, "{} records, {lost} lost: a 4 KiB ring holds up to 256", ids.len());
}

/// A map kept in host memory (bpftime's 1513): its storage lies outside the arena, where its
/// descriptor points, and a program reaches exactly those bytes: a write inside lands in the
/// host's storage, one just past it faults (the bytes after it, allocated too, stay as they
/// were), as an access past an arena map's value does.
#[test]
fn host_memory_maps_are_reached_outside_the_arena_and_nowhere_else() {
    use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
    use bpftime_gpu_ptx::maps::{ArenaLayout, GpuMapSpec};
    use bpftime_gpu_ptx::{state, Target, RUN_KERNEL, RUN_OUT_STRIDE};
    let obj = bpftime_object::Object::parse(&std::fs::read(bpftime_tests::clang::build_example("cuda_host_memory")).unwrap()).unwrap();
    let g = bpftime_runtime::gpu::gpu_program(&obj, Some("poke"), Target::default(), 4).unwrap();
    let specs: Vec<GpuMapSpec> = g.layout.maps.iter().map(|m| GpuMapSpec { in_host: true, ..m.spec.clone() }).collect();
    let layout = ArenaLayout::new(&specs, 4).unwrap();
    assert_eq!(layout.host_maps().collect::<Vec<_>>(), vec![0], "`live` is kept in host memory");
    let storage_len = layout.maps[0].data_len;
    assert_eq!(storage_len, 16, "two u64 values");
    let mut m = Machine::new(Module::parse(&g.ptx).unwrap());
    // The host's storage, with bytes after it that belong to something else.
    let host = m.memory.alloc(storage_len + 64);
    let arena = m.memory.alloc(layout.size);
    let mut image = layout.image();
    layout.place_in_host(&mut image, 0, arena, host).unwrap();
    m.memory.write(arena, &image).unwrap();
    let mut poke = |offset: u64| {
        let ctx = m.memory.alloc(8);
        m.memory.write(ctx, &offset.to_le_bytes()).unwrap();
        let out = m.memory.alloc(RUN_OUT_STRIDE);
        m.launch(RUN_KERNEL, &[ctx, 8, arena, layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, 1], Launch::default()).unwrap_or_else(|e| panic!("{e}"));
        let raw = m.memory.read(out, RUN_OUT_STRIDE).unwrap();
        let r = state::outcome(&raw[8..], u64::from_le_bytes(raw[..8].try_into().unwrap()));
        (r, m.memory.read(host, storage_len + 64).unwrap())
    };
    let (r, bytes) = poke(8);
    assert_eq!(r, Ok(0), "a write inside the storage");
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 7, "landed in the host's storage");
    let (r, bytes) = poke(16);
    assert!(matches!(r, Err(RunError { fault: Fault::OutOfBounds { write: true, .. }, .. })), "past the storage: {r:?}");
    assert!(bytes[16..].iter().all(|&b| b == 0), "the bytes after it are untouched");
    // The same program with the map in the arena writes the arena's copy.
    let mut m2 = Machine::new(Module::parse(&g.ptx).unwrap());
    let arena2 = m2.memory.alloc(g.layout.size);
    m2.memory.write(arena2, &g.arena).unwrap();
    let ctx = m2.memory.alloc(8);
    m2.memory.write(ctx, &8u64.to_le_bytes()).unwrap();
    let out = m2.memory.alloc(RUN_OUT_STRIDE);
    m2.launch(RUN_KERNEL, &[ctx, 8, arena2, g.layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, 1], Launch::default()).unwrap();
    let image2 = m2.memory.read(arena2, g.layout.size).unwrap();
    assert_eq!(g.layout.entries(&image2, 0)[1].1[0], 7u64.to_le_bytes().to_vec(), "value 1 in the arena");
}

/// Runs GPU program `g` once, one thread, on the PTX interpreter with an 8-byte context
/// holding `arg`: its outcome and the arena after the run.
fn run_once(g: &bpftime_runtime::gpu::GpuProgram, arg: u64) -> (Result<u64, RunError>, Vec<u8>) {
    use bpftime_gpu_ptx::interp::{Launch, Machine, Module};
    use bpftime_gpu_ptx::{state, RUN_KERNEL, RUN_OUT_STRIDE};
    let mut m = Machine::new(Module::parse(&g.ptx).unwrap());
    let arena = m.memory.alloc(g.layout.size);
    m.memory.write(arena, &g.arena).unwrap();
    let c = m.memory.alloc(8);
    m.memory.write(c, &arg.to_le_bytes()).unwrap();
    let out = m.memory.alloc(RUN_OUT_STRIDE);
    m.launch(RUN_KERNEL, &[c, 8, arena, g.layout.size, DEFAULT_LOOP_BUDGET, 0, 0, 0, 0, 0, 0, out, 1], Launch::default()).unwrap_or_else(|e| panic!("{e}"));
    let raw = m.memory.read(out, RUN_OUT_STRIDE).unwrap();
    (state::outcome(&raw[8..], u64::from_le_bytes(raw[..8].try_into().unwrap())), m.memory.read(arena, g.layout.size).unwrap())
}

/// Program `name` of example `example`, run once with an 8-byte context holding `arg` on the
/// CPU interpreter (its result and the object's maps) and prepared for the GPU.
fn on_cpu_and_for_gpu(example: &str, name: &str, arg: u64) -> (Result<u64, RunError>, Vec<bpftime_maps::Map>, bpftime_runtime::gpu::GpuProgram) {
    use bpftime_runtime::{EngineKind, Runtime};
    let obj = bpftime_object::Object::parse(&std::fs::read(bpftime_tests::clang::build_example(example)).unwrap()).unwrap();
    let rt = Runtime::new(Arc::new(bpftime_shm::ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Interp);
    let loaded = rt.load_object(&obj).unwrap();
    let (_, _, id) = loaded.programs.iter().find(|p| p.0 == name).unwrap();
    let mut ctx = arg.to_le_bytes().to_vec();
    let r0 = rt.run(&rt.program(*id).unwrap(), Context::Mem(&mut ctx), 0, 0, false);
    let g = bpftime_runtime::gpu::gpu_program(&obj, Some(name), bpftime_gpu_ptx::Target::default(), 4).unwrap();
    (r0, loaded.maps, g)
}

/// Every form of increment the GPU makes one atomic of (64- and 32-bit, constant and register
/// addends, the sum read after or not, the old value kept, an unaligned value taking the plain
/// path) leaves what the CPU leaves and returns what it returns.
#[test]
fn increments_as_atomics_compute_what_the_cpu_computes() {
    let n = 7u64;
    let (cpu_r0, maps, g) = on_cpu_and_for_gpu("gpu_increments", "increments", n);
    for form in ["red.global.add.u32", "red.global.add.u64", "atom.global.add.u64"] {
        assert!(g.ptx.contains(form), "an increment became `{form}`");
    }
    let vals = maps.iter().find(|m| m.name() == "vals").unwrap();
    let cpu: Vec<Vec<u8>> = (0..2u32)
        .map(|k| {
            let mut v = vec![0u8; 24];
            vals.lookup(&k.to_le_bytes(), &mut v).unwrap();
            v
        })
        .collect();
    let (gpu_r0, image) = run_once(&g, n);
    let gpu: Vec<Vec<u8>> = g.layout.entries(&image, 0).iter().map(|(_, v)| v[0][..24].to_vec()).collect();
    assert_eq!((gpu_r0, gpu), (cpu_r0, cpu), "r0 and both entries");
}

/// More distinct keys than a hash holds (1,000 into 64): an LRU hash on the GPU evicts and
/// takes every insert, as the CPU's does, ending with 64 distinct keys, the last one inserted
/// among them; a plain hash refuses the 936 past its capacity on both.
#[test]
fn an_lru_hash_on_the_gpu_evicts_as_the_cpu_does() {
    let n = 1000u64;
    let (cpu_r0, maps, g) = on_cpu_and_for_gpu("gpu_lru", "insert_many", n);
    let cpu_r0 = cpu_r0.expect("runs on the CPU");
    let mut v = vec![0u8; 8];
    maps.iter().find(|m| m.name() == "failed").unwrap().lookup(&1u32.to_le_bytes(), &mut v).unwrap();
    let cpu_plain_failed = u64::from_le_bytes(v[..8].try_into().unwrap());
    let (gpu_r0, image) = run_once(&g, n);
    assert_eq!((gpu_r0.expect("runs on the GPU"), cpu_r0), (0, 0), "no LRU insert fails");
    let slot = |name: &str| g.layout.maps.iter().position(|p| p.spec.name == name).unwrap();
    let failed = g.layout.entries(&image, slot("failed"));
    assert_eq!(u64::from_le_bytes(failed[1].1[0][..8].try_into().unwrap()), cpu_plain_failed, "the plain hash's refusals");
    assert_eq!(cpu_plain_failed, n - 64);
    let lru = g.layout.entries(&image, slot("lru"));
    let keys: std::collections::HashSet<Vec<u8>> = lru.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!((lru.len(), keys.len()), (64, 64), "64 distinct keys");
    let count_at = g.layout.hash_count_offset(slot("lru")) as usize;
    assert_eq!(u64::from_le_bytes(image[count_at..count_at + 8].try_into().unwrap()), 64, "the entry count");
    let last = 999u32.wrapping_mul(2654435761).to_le_bytes().to_vec();
    let newest = lru.iter().find(|(k, _)| *k == last).map(|(_, v)| u64::from_le_bytes(v[0][..8].try_into().unwrap()));
    assert_eq!(newest, Some(999), "the last key inserted is there with its value");
}

/// Keys that keep changing (1,000 distinct keys inserted and deleted one after the other in a
/// hash of 64): on the GPU, deleted entries of other keys are reused once no free slot is left,
/// so every insert succeeds, as on the CPU (they used to fail after 128 keys), and the table
/// ends empty.
#[test]
fn keys_that_keep_changing_reuse_deleted_entries_on_the_gpu() {
    let n = 1000u64;
    let (cpu_r0, _, g) = on_cpu_and_for_gpu("gpu_lru", "churn", n);
    assert_eq!(cpu_r0, Ok(0), "no insert fails on the CPU");
    let (r0, image) = run_once(&g, n);
    assert_eq!(r0, Ok(0), "no insert fails on the GPU");
    assert!(g.layout.entries(&image, 0).is_empty(), "every key deleted");
    let count_at = g.layout.hash_count_offset(0) as usize;
    assert_eq!(u64::from_le_bytes(image[count_at..count_at + 8].try_into().unwrap()), 0, "the entry count");
}

/// Writing a GPU hash back when an entry written back before was deleted on the GPU and its
/// slot reused by another key before the next copy: the old key goes from the host's map, the
/// new one comes.
#[test]
fn a_reused_gpu_hash_entry_deletes_the_old_key_on_the_host() {
    use bpftime_gpu_ptx::maps::{desc, ArenaLayout, GpuMapSpec};
    use bpftime_maps::{Map, MapSpec, MapType};
    use bpftime_shm::ShmRegion;
    let region = Arc::new(ShmRegion::anonymous(1 << 20).unwrap());
    let map = Map::create(&region, "h", &MapSpec::new(MapType::Hash, 4, 8, 4)).unwrap();
    let layout = ArenaLayout::new(&[GpuMapSpec::new("h", 1, 4, 8, 4)], 1).unwrap();
    let m = &layout.maps[0];
    let (x, k) = (7u32.to_le_bytes(), 9u32.to_le_bytes());
    let mut prev = layout.image();
    let mut table = prev[m.data_off as usize..(m.data_off + m.data_len) as usize].to_vec();
    layout.hash_insert(&mut table, 0, &x, &1u64.to_le_bytes()).unwrap();
    prev[m.data_off as usize..(m.data_off + m.data_len) as usize].copy_from_slice(&table);
    bpftime_runtime::gpu::write_back(&layout, &prev, None, 0, &map).unwrap();
    assert_eq!(map.keys(), vec![x.to_vec()], "the first copy brings X");
    // On the GPU: X deleted, its entry then given to K (the key bytes rewritten in place).
    let mut now = prev.clone();
    let slot = (0..m.capacity as usize).find(|&i| now[m.data_off as usize + i * m.entry_size as usize] == 2).unwrap();
    let key_at = m.data_off as usize + slot * m.entry_size as usize + desc::KEY_OFF as usize;
    now[key_at..key_at + 4].copy_from_slice(&k);
    now[key_at + 8..key_at + 16].copy_from_slice(&2u64.to_le_bytes());
    bpftime_runtime::gpu::write_back(&layout, &now, Some(&prev), 0, &map).unwrap();
    assert_eq!(map.keys(), vec![k.to_vec()], "X is gone, K is there");
}

/// Stack stores the GPU leaves out are the ones nothing reads, even where a frame outlives its
/// function: a later call of the function reads what an earlier one stored, and code reads a
/// called function's frame below its own after the call returns.
#[test]
fn frames_a_function_left_are_read_as_it_left_them() {
    let cases = [
        // The second call of `f` reads the first one's 7.
        ("r1 = 0\ncall f\nr1 = 1\ncall f\nexit\nf:\nif r1 != 0 goto +3\n*(u64 *)(r10 - 8) = 7\nr0 = 0\nexit\nr0 = *(u64 *)(r10 - 8)\nexit", 7),
        // The caller reads `g`'s frame (512 bytes below its own) after `g` returns.
        ("call g\nr1 = r10\nr1 += -520\nr0 = *(u64 *)(r1 + 0)\nexit\ng:\n*(u64 *)(r10 - 8) = 9\nr0 = 0\nexit", 9),
    ];
    let helpers = Arc::new(bpftime_tests::datatest::test_helpers());
    for (src, want) in cases {
        let code = bpftime_vm::asm::assemble(src).unwrap();
        let prog = Arc::new(bpftime_vm::verify(&code, helpers.clone(), &NoMaps).unwrap());
        let cpu = run(&Interpreter::new(prog.clone()), Context::None, &RunOptions::default());
        assert_eq!(cpu, Ok(want), "{src}");
        let gpu = run_on_ptx_interpreter(&prog, &bpftime_tests::gpu::test_helper_set(), &[], DEFAULT_LOOP_BUDGET).unwrap();
        assert_eq!(gpu.result, Ok(want), "{src}");
    }
}

/// The programs of `examples/bpf/map_helpers.bpf.c` on maps the GPU has answer on the PTX
/// interpreter what they answer on the CPU, where `map_helpers.rs` checks them against the
/// kernel: each flag of updates and deletes on hash, LRU hash and array maps (a full one, one allocating
/// on insert, 4-byte values), lookups after them, values written through a lookup's pointer;
/// and `callback_answers.bpf.c`'s `bpf_loop` calls (checked against the kernel by the loaders
/// test). (The GPU has no ring buffer reserve, and per-SM values are not per-CPU ones.)
#[test]
fn map_helpers_answer_on_the_gpu_as_in_the_kernel() {
    let programs = [("map_helpers", "hash_flags"), ("map_helpers", "lru_flags"), ("map_helpers", "array_flags"), ("callback_answers", "loops")];
    for (example, name) in programs {
        let (cpu_r0, maps, g) = on_cpu_and_for_gpu(example, name, 0);
        let slots = cpu_r0.as_ref().copied().unwrap_or_else(|e| panic!("{name} on the CPU: {e}"));
        let out = maps.iter().find(|m| m.name() == "out").unwrap();
        let cpu_out: Vec<Vec<u8>> = (0..slots as u32)
            .map(|k| {
                let mut v = vec![0u8; 8];
                out.lookup(&k.to_le_bytes(), &mut v).unwrap();
                v
            })
            .collect();
        let (gpu_r0, mut image) = run_once(&g, 0);
        g.layout.fold_shards(&mut image);
        let slot = g.layout.maps.iter().position(|p| p.spec.name == "out").unwrap();
        let gpu_out: Vec<Vec<u8>> = g.layout.entries(&image, slot).into_iter().take(slots as usize).map(|(_, v)| v[0].clone()).collect();
        let words = |o: &[Vec<u8>]| o.iter().map(|v| i64::from_le_bytes(v[..8].try_into().unwrap())).collect::<Vec<_>>();
        assert_eq!((gpu_r0.map_err(|e| e.to_string()), words(&gpu_out)), (Ok(slots), words(&cpu_out)), "{name}: GPU (left), CPU (right)");
    }
}
