//! Every vector of the bpf_conformance suite through both engines.

use bpftime_jit::JitProgram;
use bpftime_tests::{conformance_vectors, Vector};
use bpftime_vm::exec::{run, Context, Engine, RunOptions};
use bpftime_vm::{conformance, verify_bytecode, Interpreter, NoMaps, Program};
use std::sync::Arc;

fn check_all(engine_name: &str, make: impl Fn(Arc<Program>) -> Box<dyn Engine>) {
    let Some(vectors) = conformance_vectors() else {
        println!("skip: no conformance vectors at {}", bpftime_tests::conformance_dir().display());
        return;
    };
    let helpers = Arc::new(conformance::helper_table());
    let mut failures = Vec::new();
    for v in &vectors {
        if let Err(f) = check_one(v, &helpers, &make) {
            failures.push(format!("{}: {f}", v.name));
        }
    }
    assert!(failures.is_empty(), "{engine_name}: {} of {} failed:\n{}", failures.len(), vectors.len(), failures.join("\n"));
    println!("{engine_name}: all {} vectors passed", vectors.len());
}

fn check_one(v: &Vector, helpers: &Arc<bpftime_vm::HelperTable>, make: &impl Fn(Arc<Program>) -> Box<dyn Engine>) -> Result<(), String> {
    let prog = verify_bytecode(&v.program, helpers.clone(), &NoMaps).map_err(|e| format!("verifier: {e}"))?;
    let engine = make(Arc::new(prog));
    let mut mem = v.mem.clone();
    let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
    match run(engine.as_ref(), ctx, &RunOptions::default()) {
        Ok(r) if r == v.result => Ok(()),
        Ok(r) => Err(format!("got {r:#x}, want {:#x}", v.result)),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn conformance_interpreter() {
    check_all("interpreter", |p| Box::new(Interpreter::new(p)));
}

#[test]
fn conformance_jit() {
    check_all("jit", |p| Box::new(JitProgram::compile(p).expect("compiles")));
}

/// Code for other processes (the code cache, `bpftime aot`): compiled position-independent
/// into an object file, linked by our linker, mapped and run.
#[test]
fn conformance_object_code() {
    check_all("object", |p| {
        let object = bpftime_jit::compile_object(&[("prog", &p)], Default::default()).expect("compiles");
        let image = bpftime_jit::link::link(&object).expect("links");
        Box::new(image.load(p, "prog").expect("loads"))
    });
}

/// One `Runner` reused for every vector (as a probe's runner is reused hit after hit), with
/// contexts of every size and none: each vector's result and memory as with a fresh `run`.
#[test]
fn conformance_through_one_reused_runner() {
    let Some(vectors) = conformance_vectors() else {
        println!("skip: no conformance vectors at {}", bpftime_tests::conformance_dir().display());
        return;
    };
    let helpers = Arc::new(conformance::helper_table());
    let mut runners =
        [bpftime_vm::exec::Runner::new(&[], bpftime_vm::exec::DEFAULT_LOOP_BUDGET), bpftime_vm::exec::Runner::new(&[], bpftime_vm::exec::DEFAULT_LOOP_BUDGET)];
    let mut checked = 0;
    for v in &vectors {
        let Ok(prog) = verify_bytecode(&v.program, helpers.clone(), &NoMaps) else { continue };
        let prog = Arc::new(prog);
        let engines: [bpftime_vm::exec::SharedEngine; 2] = [Arc::new(Interpreter::new(prog.clone())), Arc::new(JitProgram::compile(prog).expect("compiles"))];
        for (engine, runner) in engines.iter().zip(&mut runners) {
            let mut fresh = v.mem.clone();
            let want = run(engine.as_ref(), if fresh.is_empty() { Context::None } else { Context::Mem(&mut fresh) }, &RunOptions::default());
            let mut mem = v.mem.clone();
            let got = runner.run(engine, if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) }, std::ptr::null_mut());
            assert_eq!(got, want, "{}", v.name);
            assert_eq!(mem, fresh, "{}: memory", v.name);
            checked += 1;
        }
    }
    assert!(checked > 600, "{checked}");
}
