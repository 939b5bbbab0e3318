//! Callbacks (functions whose address a program passes to a helper, as for bpf_loop) on both
//! engines and through the reusable `Runner`: a callback runs, a callback from inside a
//! callback and a call to something that is not a callback fault cleanly instead of
//! overwriting frames or overflowing the native stack.

use bpftime_jit::JitProgram;
use bpftime_vm::exec::{run, Runner, SharedEngine};
use bpftime_vm::{verify, Context, Fault, HelperTable, Interpreter, NoMaps, RunState};
use std::sync::Arc;

/// Helper 1: calls back the function at slot r1 with r1 = r2; returns its r0.
extern "C" fn call_back(pc: u64, arg: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    state.call_function(pc as usize, [arg, 0, 0, 0, 0]).unwrap_or(u64::MAX)
}

fn engines(src: &str) -> Vec<(&'static str, SharedEngine)> {
    let code = bpftime_vm::asm::assemble(src).expect("assembles");
    let mut helpers = HelperTable::new();
    helpers.register(1, "call_back", call_back);
    let prog = Arc::new(verify(&code, Arc::new(helpers), &NoMaps).expect("verifies"));
    vec![("interp", Arc::new(Interpreter::new(prog.clone()))), ("jit", Arc::new(JitProgram::compile(prog).expect("compiles")))]
}

/// The result through `run` and through a `Runner`, which must agree.
fn results(src: &str) -> Vec<Result<u64, bpftime_vm::RunError>> {
    let mut out = vec![];
    for (name, e) in engines(src) {
        let direct = run(e.as_ref(), Context::None, &Default::default());
        let mut runner = Runner::new(&[], 1 << 20);
        let reused = runner.run_read_only(&e, &[], std::ptr::null_mut());
        assert_eq!(direct, reused, "{name}: run and Runner agree");
        // A second run on the same runner starts clean after a fault.
        assert_eq!(runner.run_read_only(&e, &[], std::ptr::null_mut()), reused, "{name}: runner reused");
        out.push(direct);
    }
    out
}

#[test]
fn a_callback_runs_with_its_argument() {
    let src = "
        r1 = func(+4) ll
        r2 = 20
        call 1
        exit
        r0 = r1
        r0 += 22
        exit
    ";
    assert_eq!(results(src), [Ok(42), Ok(42)]);
}

#[test]
fn a_callback_from_inside_a_callback_faults() {
    // The callback passes itself back to the helper: without the check this recursed on the
    // native stack until the process died.
    let src = "
        r1 = func(+4) ll
        r2 = 1
        call 1
        exit
        r1 = func(-1) ll
        r2 = 2
        call 1
        exit
    ";
    for r in results(src) {
        assert_eq!(r.expect_err("faults").fault, Fault::NestedCallback { pc: 5 });
    }
}

#[test]
fn calling_back_what_is_not_a_callback_faults() {
    // Slot 0 starts the entry function, slot 3 starts nothing; neither is a callback.
    for pc in [0, 3] {
        let src = format!("r1 = {pc}\ncall 1\nexit\n");
        for r in results(&src) {
            assert_eq!(r.expect_err("faults").fault, Fault::BadCallback { pc });
        }
    }
}

/// Helper 2: calls back the function at slot r1 `r2` times, as `bpf_loop` does.
extern "C" fn call_back_n(pc: u64, n: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    for i in 0..n {
        if state.call_function(pc as usize, [i, 0, 0, 0, 0]).is_none() || state.status != bpftime_vm::exec::STATUS_RUNNING {
            return i;
        }
    }
    n
}

#[test]
fn callbacks_are_charged_to_the_loop_budget() {
    // A callback of 2 slots called 2^23 times costs 2^24 units: more than a probe's budget,
    // well within the default one. Without the charge a hot probe with bpf_loop ran for
    // seconds per hit.
    let code = bpftime_vm::asm::assemble("r1 = func(+4) ll\nr2 = 0x800000\ncall 2\nexit\nr0 = 0\nexit\n").expect("assembles");
    let mut helpers = HelperTable::new();
    helpers.register(2, "call_back_n", call_back_n);
    let prog = Arc::new(verify(&code, Arc::new(helpers), &NoMaps).expect("verifies"));
    let engines: [(&str, SharedEngine); 2] =
        [("interp", Arc::new(Interpreter::new(prog.clone()))), ("jit", Arc::new(JitProgram::compile(prog).expect("compiles")))];
    for (name, e) in engines {
        let mut probe = Runner::new(&[], bpftime_vm::exec::PROBE_LOOP_BUDGET);
        let r = probe.run_read_only(&e, &[], std::ptr::null_mut());
        assert_eq!(r.expect_err("runs out").fault, Fault::LoopBudget, "{name}");
        let mut exact = Runner::new(&[], 2 << 23);
        assert_eq!(exact.run_read_only(&e, &[], std::ptr::null_mut()), Ok(0x800000), "{name}: 2^24 units pay for it");
        let mut short = Runner::new(&[], (2 << 23) - 1);
        assert_eq!(short.run_read_only(&e, &[], std::ptr::null_mut()).map_err(|e| e.fault), Err(Fault::LoopBudget), "{name}");
    }
}

/// Helper 3: lends key `r2` and calls back the function at slot r1 with its address in r1, as
/// `bpf_for_each_map_elem` does for an array's index.
extern "C" fn lend_and_call_back(pc: u64, key: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let addr = state.lend_key(key as u32);
    state.call_function(pc as usize, [addr, 0, 0, 0, 0]).unwrap_or(u64::MAX)
}

#[test]
fn a_lent_key_can_be_read_but_not_written() {
    let engines = |src: &str| -> Vec<(&'static str, SharedEngine)> {
        let code = bpftime_vm::asm::assemble(src).expect("assembles");
        let mut helpers = HelperTable::new();
        helpers.register(3, "lend_and_call_back", lend_and_call_back);
        let prog = Arc::new(verify(&code, Arc::new(helpers), &NoMaps).expect("verifies"));
        vec![("interp", Arc::new(Interpreter::new(prog.clone()))), ("jit", Arc::new(JitProgram::compile(prog).expect("compiles")))]
    };
    let read = "r1 = func(+4) ll\nr2 = 41\ncall 3\nexit\nr0 = *(u32 *)(r1 + 0)\nr0 += 1\nexit\n";
    for (name, e) in engines(read) {
        assert_eq!(run(e.as_ref(), Context::None, &Default::default()), Ok(42), "{name}");
    }
    // Past its 4 bytes, and any store, is out of bounds.
    for body in ["r0 = *(u64 *)(r1 + 0)", "*(u32 *)(r1 + 0) = 1"] {
        let src = format!("r1 = func(+4) ll\nr2 = 41\ncall 3\nexit\n{body}\nr0 = 0\nexit\n");
        for (name, e) in engines(&src) {
            let fault = run(e.as_ref(), Context::None, &Default::default()).expect_err("faults").fault;
            assert!(matches!(fault, Fault::OutOfBounds { .. }), "{name}: `{body}`: {fault:?}");
        }
    }
}
