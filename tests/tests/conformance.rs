//! Every vector of the bpf_conformance suite through every engine.

use bpftime_tests::conformance_vectors;
use bpftime_vm::exec::{run, Context, RunOptions};
use bpftime_vm::{conformance, verify_bytecode, Interpreter, NoMaps};
use std::sync::Arc;

#[test]
fn conformance_interpreter() {
    let Some(vectors) = conformance_vectors() else {
        println!("skip: no conformance vectors at {}", bpftime_tests::conformance_dir().display());
        return;
    };
    let helpers = Arc::new(conformance::helper_table());
    let mut failures = Vec::new();
    for v in &vectors {
        let prog = match verify_bytecode(&v.program, helpers.clone(), &NoMaps) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: verifier: {e}", v.name));
                continue;
            }
        };
        let interp = Interpreter::new(Arc::new(prog));
        let mut mem = v.mem.clone();
        let ctx = if mem.is_empty() { Context::None } else { Context::Mem(&mut mem) };
        match run(&interp, ctx, &RunOptions::default()) {
            Ok(r) if r == v.result => {}
            Ok(r) => failures.push(format!("{}: got {r:#x}, want {:#x}", v.name, v.result)),
            Err(e) => failures.push(format!("{}: {e}", v.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), vectors.len(), failures.join("\n"));
    println!("{} vectors passed", vectors.len());
}
