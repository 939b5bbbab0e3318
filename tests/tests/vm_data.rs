//! Runs every case of `tests/data/vm/` and `tests/data/vm-cpu/` on the interpreter and the JIT.

use bpftime_jit::JitProgram;
use bpftime_tests::datatest::{load_cases, test_helpers, Case, Expect};
use bpftime_vm::exec::{run, Context, Engine, RunOptions, DEFAULT_LOOP_BUDGET};
use bpftime_vm::{verify_bytecode, Interpreter, NoMaps};
use std::sync::Arc;

fn outcome(case: &Case, engine: &str) -> (Result<u64, String>, Vec<u8>) {
    let helpers = Arc::new(test_helpers());
    let prog = match verify_bytecode(&case.program, helpers, &NoMaps) {
        Ok(p) => Arc::new(p),
        Err(e) => return (Err(e.to_string()), case.mem.clone()),
    };
    let engine: Box<dyn Engine> = match engine {
        "interp" => Box::new(Interpreter::new(prog)),
        _ => Box::new(JitProgram::compile(prog).expect("verified programs compile")),
    };
    let mut mem = case.mem.clone();
    let opts = RunOptions { budget: case.budget.unwrap_or(DEFAULT_LOOP_BUDGET), ..RunOptions::default() };
    let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
    let r = run(engine.as_ref(), ctx, &opts).map_err(|e| e.to_string());
    (r, mem)
}

fn check(case: &Case, engine: &str) -> Result<(), String> {
    let (r, mem) = outcome(case, engine);
    match (&case.expect, &r) {
        (Expect::Result(want), Ok(got)) if want == got => {}
        (Expect::Error(want), Err(got)) if got.contains(want.as_str()) => {}
        (want, got) => return Err(format!("want {want:?}, got {got:?}")),
    }
    if let Some(after) = &case.mem_after {
        if &mem != after {
            return Err(format!("memory after run: {mem:02x?}, want {after:02x?}"));
        }
    }
    Ok(())
}

#[test]
fn vm_data_tests_on_both_engines() {
    // `vm-cpu`: cases of CPU-only helpers, which the GPU backend's own run of `vm` leaves out.
    let mut cases = load_cases(&bpftime_tests::repo_root().join("tests/data/vm"));
    assert!(cases.len() > 100, "expected the case folder, found {} cases", cases.len());
    cases.extend(load_cases(&bpftime_tests::repo_root().join("tests/data/vm-cpu")));
    let mut failures = Vec::new();
    for case in &cases {
        for engine in ["interp", "jit"] {
            if let Err(e) = check(case, engine) {
                failures.push(format!("{} [{engine}]: {e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    println!("{} cases passed on both engines", cases.len());
}

#[test]
fn disassembly_reassembles_to_the_same_bytes() {
    use bpftime_vm::insn::{decode, parse_bytecode, to_bytecode};
    let cases = load_cases(&bpftime_tests::repo_root().join("tests/data/vm"));
    let mut checked = 0;
    for case in &cases {
        let Ok(raw) = parse_bytecode(&case.program) else { continue };
        let Ok(insns) = decode(&raw) else { continue };
        let text = bpftime_vm::disasm::disassemble(&insns);
        let again = bpftime_vm::asm::assemble(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", case.name));
        assert_eq!(to_bytecode(&again), case.program, "{}:\n{text}", case.name);
        checked += 1;
    }
    assert!(checked > 100);
}
