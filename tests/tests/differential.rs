//! Differential testing: the JIT must agree with the interpreter (the reference) on r0, on
//! memory, and on errors (same instruction, same fault) for thousands of random programs.

use bpftime_jit::JitProgram;
use bpftime_tests::datatest::test_helpers;
use bpftime_tests::progen::{program, GenProgram};
use bpftime_vm::exec::{run, Context, Engine, RunError, RunOptions};
use bpftime_vm::insn::to_bytecode;
use bpftime_vm::{verify_bytecode, Interpreter, NoMaps};
use proptest::prelude::*;
use std::sync::Arc;

fn run_on(engine: &dyn Engine, mem: &mut [u8], initial: &[u8]) -> Result<u64, RunError> {
    mem.copy_from_slice(initial);
    let opts = RunOptions { budget: 500, ..RunOptions::default() };
    run(engine, Context::Mem(mem), &opts)
}

fn check(g: &GenProgram) -> Result<(), TestCaseError> {
    let code = to_bytecode(&g.bytecode());
    let prog = match verify_bytecode(&code, Arc::new(test_helpers()), &NoMaps) {
        Ok(p) => Arc::new(p),
        // The generator can produce a local call chain that recurses (main calls the callee,
        // which cannot call) never; any other rejection is a generator bug.
        Err(e) => return Err(TestCaseError::fail(format!("generated program rejected: {e}"))),
    };
    let interp = Interpreter::new(prog.clone());
    let jit = JitProgram::compile(prog).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // One buffer for both runs, so that pointers (and fault addresses) are the same.
    let mut mem = vec![0u8; g.mem.len()];
    let want = run_on(&interp, &mut mem, &g.mem);
    let want_mem = mem.clone();
    let got = run_on(&jit, &mut mem, &g.mem);
    prop_assert_eq!(got, want, "r0 or error differ");
    prop_assert_eq!(mem, want_mem, "memory differs");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn jit_agrees_with_interpreter(g in program()) {
        check(&g)?;
    }
}

/// The generator must reach every kind of outcome, or the agreement above proves little.
#[test]
fn generated_programs_cover_every_outcome() {
    use bpftime_vm::Fault;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..1500 {
        let g = strategy.new_tree(&mut runner).expect("value").current();
        let code = to_bytecode(&g.bytecode());
        let prog = Arc::new(verify_bytecode(&code, Arc::new(test_helpers()), &NoMaps).expect("verifies"));
        let mut mem = g.mem.clone();
        let kind = match run_on(&Interpreter::new(prog), &mut mem, &g.mem) {
            Ok(_) => "ok",
            Err(e) => match e.fault {
                Fault::OutOfBounds { write: false, .. } => "load out of bounds",
                Fault::OutOfBounds { write: true, .. } => "store out of bounds",
                Fault::Misaligned { .. } => "misaligned atomic",
                Fault::UnknownHelper { .. } => "unknown helper",
                Fault::LoopBudget => "loop budget",
                Fault::Helper { .. } | Fault::BadCallback { .. } | Fault::NestedCallback { .. } => "helper fault",
            },
        };
        *seen.entry(kind).or_default() += 1;
    }
    println!("{seen:?}");
    for kind in ["ok", "load out of bounds", "store out of bounds", "misaligned atomic", "unknown helper", "loop budget"] {
        assert!(seen.get(kind).copied().unwrap_or(0) >= 5, "outcome `{kind}` too rare: {seen:?}");
    }
}
