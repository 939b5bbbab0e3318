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
#[ignore]
fn dump_one_vector_ptx() {
    let vectors = conformance_vectors().unwrap();
    let v = vectors.iter().find(|v| v.name.contains(&std::env::var("VEC").unwrap_or("div".into()))).unwrap();
    let helpers = Arc::new(conformance::helper_table());
    let prog = verify_bytecode(&v.program, helpers, &NoMaps).unwrap();
    let ptx = bpftime_gpu_ptx::translate(&prog, &HelperSet::conformance(), &Default::default(), Default::default()).unwrap();
    std::fs::write("/tmp/vec.ptx", ptx).unwrap();
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
    use bpftime_tests::progen::program;
    use bpftime_vm::insn::to_bytecode;
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let gpu_helpers = test_helper_set();
    let n: usize = std::env::var("BPFTIME_GPU_RANDOM").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let stack = cpu_stack_bottom();
    // The PTX kernel's state block sits just below the stack: keep buffers away from it.
    let local = (stack - 128)..(stack + 4096);
    let mut failures = vec![];
    let mut keep = vec![];
    for i in 0..n {
        let g = strategy.new_tree(&mut runner).expect("value").current();
        let code = to_bytecode(&g.bytecode());
        let prog = Arc::new(verify_bytecode(&code, Arc::new(test_helpers()), &NoMaps).expect("verifies"));
        let mut mem = g.mem.clone();
        while local.contains(&(mem.as_ptr() as u64)) || local.contains(&(mem.as_ptr() as u64 + mem.len() as u64)) {
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
        if failures.len() >= 5 {
            break;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
    println!("{n} random programs agree");
}

/// By hand: `ASM=file cargo test -p bpftime-tests --test gpu_ptx debug_asm -- --ignored`.
#[test]
#[ignore]
fn debug_asm() {
    use bpftime_tests::datatest::test_helpers;
    let src = std::fs::read_to_string(std::env::var("ASM").unwrap()).unwrap();
    let code = bpftime_vm::asm::assemble(&src).unwrap();
    let prog = Arc::new(bpftime_vm::verify(&code, Arc::new(test_helpers()), &NoMaps).unwrap());
    let mem = vec![0u8; 64];
    let mut m2 = mem.clone();
    let want = run(&Interpreter::new(prog.clone()), Context::Mem(&mut m2), &RunOptions { budget: 500, ..RunOptions::default() });
    let ptx = bpftime_gpu_ptx::translate(&prog, &bpftime_tests::gpu::test_helper_set(), &Default::default(), Default::default()).unwrap();
    std::fs::write("/tmp/debug.ptx", &ptx).unwrap();
    let got = run_on_ptx_interpreter(&prog, &bpftime_tests::gpu::test_helper_set(), &mem, 500).unwrap();
    println!("interp {want:?}\nptx {:?}", got.result);
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
    let jobs: Vec<(String, String, u32)> = modules
        .iter()
        .flat_map(|(name, p, h)| {
            [75, 80, 90].into_iter().map(move |sm| (name.clone(), translate(p, h, &Default::default(), Target { sm }).expect("translates"), sm))
        })
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
