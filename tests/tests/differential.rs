//! Differential testing: the JIT must agree with the interpreter (the reference) on r0, on
//! memory, and on errors (same instruction, same fault) for thousands of random programs; and
//! the verifier's proofs must be right: both engines without the proven accesses' checks must
//! agree with the interpreter keeping every check, and no access the latter finds out of
//! bounds may be one the verifier proved.

use bpftime_jit::JitProgram;
use bpftime_tests::datatest::{test_helpers, TestMaps};
use bpftime_tests::progen::{program, GenProgram};
use bpftime_vm::exec::{run, Context, Engine, RunError, RunOptions};
use bpftime_vm::insn::to_bytecode;
use bpftime_vm::record::restore;
use bpftime_vm::{verify_bytecode, verify_with, Checks, Interpreter, Region};
use proptest::prelude::*;
use std::sync::Arc;

fn run_on(engine: &dyn Engine, mem: &mut [u8], initial: &[u8]) -> Result<u64, RunError> {
    mem.copy_from_slice(initial);
    let opts = RunOptions { budget: 500, ..RunOptions::default() };
    run(engine, Context::Mem(mem), &opts)
}

fn check(g: &GenProgram) -> Result<(), TestCaseError> {
    let code = to_bytecode(&g.bytecode());
    let prog = match verify_bytecode(&code, Arc::new(test_helpers()), &TestMaps) {
        Ok(p) => Arc::new(p),
        // The generator can produce a local call chain that recurses (main calls the callee,
        // which cannot call) never; any other rejection is a generator bug.
        Err(e) => return Err(TestCaseError::fail(format!("generated program rejected: {e}"))),
    };
    let checked = Arc::new(verify_with(&g.bytecode(), Arc::new(test_helpers()), &TestMaps, Checks::All).expect("verifies"));
    let interp = Interpreter::new(prog.clone());
    let jit = JitProgram::compile(prog.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // What the code cache does in another process: the verifier's record rebuilds the same
    // program without analysis, and its position-independent code runs like the JIT's.
    let restored = restore(&g.bytecode(), prog.helpers().clone(), &TestMaps, &prog.record()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(restored == *prog, "the record does not rebuild the verified program");
    let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mapped = bpftime_jit::link::link(&object).and_then(|i| i.load(Arc::new(restored), "prog")).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // One buffer for every run, so that pointers (and fault addresses) are the same.
    let mut mem = vec![0u8; g.mem.len()];
    let want = run_on(&Interpreter::new(checked), &mut mem, &g.mem);
    let want_mem = mem.clone();
    if let Err(e @ RunError { fault: bpftime_vm::Fault::OutOfBounds { .. }, .. }) = &want {
        let proofs_apply = prog.context_needs().met(mem.as_ptr() as u64, &Region::of_mut(&mut mem));
        prop_assert!(!(proofs_apply && prog.access(e.insn).proven), "insn {} was proven in bounds, but: {e}", e.insn);
    }
    for (engine, name) in [(&interp as &dyn Engine, "interpreter"), (&jit, "JIT"), (&mapped, "object code")] {
        let got = run_on(engine, &mut mem, &g.mem);
        prop_assert_eq!(&got, &want, "{}: r0 or error differ", name);
        prop_assert_eq!(&mem, &want_mem, "{}: memory differs", name);
    }
    Ok(())
}

/// The proofs must be put to the test: many generated programs need a proof of a computed
/// access, with a context that meets their needs.
#[test]
fn generated_programs_exercise_proofs() {
    use bpftime_vm::insn::Insn;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let (mut with_proofs, mut computed, mut in_values, mut walks) = (0, 0, 0, 0);
    for _ in 0..1000 {
        let g = strategy.new_tree(&mut runner).expect("value").current();
        let prog = verify_bytecode(&to_bytecode(&g.bytecode()), Arc::new(test_helpers()), &TestMaps).expect("verifies");
        if prog.context_needs().len > g.mem.len() as u64 {
            continue;
        }
        let n = (0..prog.len())
            .filter(|&pc| prog.access(pc).proven)
            .filter(|&pc| matches!(prog.insns()[pc], Insn::Load { base, .. } | Insn::Store { base, .. } | Insn::Atomic { base, .. } if base.index() < 8))
            .count();
        with_proofs += (n > 0) as usize;
        computed += n;
        // Walked loops whose walks are checked once on entry.
        walks += bpftime_vm::walks::walked_loops(prog.insns(), 0, prog.len(), &|pc| prog.is_resolved(pc))
            .iter()
            .any(|w| w.walks.iter().any(|a| !prog.access(a.pc).proven)) as usize;
        // Accesses into a looked-up value, proven after the null check.
        in_values += (0..prog.len()).filter(|&pc| prog.access(pc).proven && prog.access(pc).target == bpftime_vm::analysis::Target::Memory).count();
    }
    println!("{with_proofs} of 1000 programs run with proofs of {computed} computed accesses, {in_values} in map values; {walks} have walked loops");
    assert!(walks >= 100, "only {walks} programs with walked loops");
    assert!(with_proofs >= 150, "only {with_proofs} programs exercise proofs of computed accesses");
    assert!(in_values >= 60, "only {in_values} proven accesses into map values");
}

proptest! {
    // PROPTEST_CASES=N runs more (a longer fuzz).
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000), max_shrink_iters: 2000, ..ProptestConfig::default() })]

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
        let prog = Arc::new(verify_bytecode(&code, Arc::new(test_helpers()), &TestMaps).expect("verifies"));
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

/// Inlined array lookups: the JIT computes the value's address itself where the verifier
/// allows it, and must return exactly what the lookup helper (which the interpreter calls)
/// returns, for keys inside and outside the array, for a plain array (map 1) and a per-CPU one
/// (map 2: two CPUs' copies side by side, this thread's CPU being 1).
#[test]
fn inlined_array_lookups_agree_with_the_helper() {
    use bpftime_vm::analysis::{ArrayLayout, Pointee};
    use bpftime_vm::exec::{HelperEffects, HelperReturn, HelperTable, RunState};
    use bpftime_vm::insn::LddwKind;
    use bpftime_vm::LddwResolver;

    const ENTRIES: u32 = 5;
    const STRIDE: u64 = 16;
    const PLAIN: u64 = 0x77;
    const PER_CPU: u64 = 0x78;
    static VALUES: [u8; (ENTRIES as usize) * STRIDE as usize] = [0; (ENTRIES as usize) * STRIDE as usize];
    extern "C" fn cpu() -> u64 {
        1
    }
    extern "C" fn lookup(map: u64, key: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
        let this_cpu = if map == PER_CPU { cpu() * 8 } else { 0 };
        match state.slice(key, 4) {
            Some(k) => {
                let k = u32::from_le_bytes(k.try_into().unwrap());
                if k < ENTRIES {
                    VALUES.as_ptr() as u64 + k as u64 * STRIDE + this_cpu
                } else {
                    0
                }
            }
            None => 0,
        }
    }
    struct Resolver;
    impl LddwResolver for Resolver {
        fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
            Ok(if lo == 1 { PLAIN } else { PER_CPU })
        }
        fn pointee(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Option<Pointee> {
            let (cpu, cpu_stride) = if lo == 1 { (0, 0) } else { (cpu as *const () as u64, 8) };
            let array = ArrayLayout { values: VALUES.as_ptr() as u64, stride: STRIDE, max_entries: ENTRIES, cpu, cpu_stride };
            Some(Pointee::Map { value_size: 8, key_size: 4, array: Some(array) })
        }
    }
    let mut helpers = HelperTable::new();
    helpers
        .register(1, "map_lookup_elem", lookup)
        .set_effects(1, HelperEffects { returns: HelperReturn::MapValueOrNull, leaves_stack: true, never_stops: true });
    let helpers = Arc::new(helpers);
    for (map, cpu_offset) in [(1, 0), (2, 8)] {
        // r0 = lookup(key from the context) - values, or u64::MAX for null.
        let src = format!(
            "r9 = {} ll
            r6 = *(u32 *)(r1 + 0)
            *(u32 *)(r10 - 4) = r6
            r2 = r10
            r2 += -4
            r1 = map_fd({map}) ll
            call 1
            if r0 == 0 goto null
            r0 -= r9
            exit
        null:
            r0 = -1
            exit",
            VALUES.as_ptr() as u64
        );
        let code = bpftime_vm::asm::assemble(&src).unwrap();
        let prog = Arc::new(bpftime_vm::verify(&code, helpers.clone(), &Resolver).unwrap());
        let call = (0..prog.len()).find(|&pc| matches!(prog.insns()[pc], bpftime_vm::Insn::Call(_))).unwrap();
        assert!(prog.inline_lookup(call).is_some(), "map {map}: the lookup should be inlined");
        let jit = JitProgram::compile(prog.clone()).unwrap();
        // Position-independent code reads the array's address and the CPU function from its
        // import table; the rebuilt program finds the same array through the record.
        let restored = Arc::new(restore(&code, helpers.clone(), &Resolver, &prog.record()).unwrap());
        assert!(*restored == *prog && restored.inline_lookup(call).is_some());
        let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).unwrap();
        let mapped = bpftime_jit::link::link(&object).unwrap().load(restored, "prog").unwrap();
        let interp = Interpreter::new(prog);
        for key in [0u32, 1, 4, 5, 6, u32::MAX] {
            let want = if key < ENTRIES { key as u64 * STRIDE + cpu_offset } else { u64::MAX };
            for engine in [&jit as &dyn Engine, &interp, &mapped] {
                let mut mem = key.to_le_bytes();
                assert_eq!(run(engine, Context::Mem(&mut mem), &RunOptions::default()), Ok(want), "map {map}, key {key}");
            }
            // The same key as a constant the verifier knows: a fixed address, or null.
            let constant = src.replace("r6 = *(u32 *)(r1 + 0)", &format!("w6 = {}", key as i32));
            let code = bpftime_vm::asm::assemble(&constant).unwrap();
            let prog = Arc::new(bpftime_vm::verify(&code, helpers.clone(), &Resolver).unwrap());
            assert_eq!(prog.lookup_key(call), Some(key), "map {map}: the key should be known");
            let restored = Arc::new(restore(&code, helpers.clone(), &Resolver, &prog.record()).unwrap());
            assert!(*restored == *prog && restored.lookup_key(call) == Some(key));
            let jit = JitProgram::compile(prog.clone()).unwrap();
            let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).unwrap();
            let mapped = bpftime_jit::link::link(&object).unwrap().load(restored, "prog").unwrap();
            let interp = Interpreter::new(prog);
            for engine in [&jit as &dyn Engine, &interp, &mapped] {
                assert_eq!(run(engine, Context::None, &RunOptions::default()), Ok(want), "map {map}, constant key {key}");
            }
        }
    }
    // The compiled code leaves out the stack stores nothing reads: a key whose lookup is
    // inlined with the key it knows, a slot never read again, one written just before the
    // entry function's exit. It keeps a slot read later, a key a lookup reads at run time, and
    // what a called function may read through a pointer to its caller's frame. Every engine
    // agrees.
    let straight = "
        *(u32 *)(r10 - 4) = 2
        *(u64 *)(r10 - 16) = 7
        r2 = r10
        r2 += -4
        r1 = map_fd(1) ll
        call 1
        if r0 == 0 goto null
        r3 = *(u64 *)(r10 - 16)
        *(u64 *)(r10 - 24) = r3
        r7 = *(u32 *)(r0 + 0)
        *(u32 *)(r10 - 32) = r7
        r2 = r10
        r2 += -32
        r1 = map_fd(1) ll
        call 1
        if r0 == 0 goto null
        r0 = r3
        *(u64 *)(r10 - 48) = r0
        exit
    null:
        r0 = -1
        exit";
    let calling = "
        *(u64 *)(r10 - 8) = 5
        r1 = r10
        r1 += -8
        call read_it
        exit
    read_it:
        r0 = *(u64 *)(r1 + 0)
        exit";
    // (Store ordinals left out, result.)
    for (src, left_out, want) in [(straight, vec![0, 2, 4], 7), (calling, vec![], 5)] {
        let code = bpftime_vm::asm::assemble(src).unwrap();
        let prog = Arc::new(bpftime_vm::verify(&code, helpers.clone(), &Resolver).unwrap());
        let stores: Vec<usize> = (0..prog.len()).filter(|&pc| matches!(prog.insns()[pc], bpftime_vm::Insn::Store { .. })).collect();
        let want_out: Vec<usize> = left_out.iter().map(|&i| stores[i]).collect();
        assert_eq!(bpftime_jit::stores_left_out(&prog), want_out, "stores at {stores:?}");
        let jit = JitProgram::compile(prog.clone()).unwrap();
        let restored = Arc::new(restore(&code, helpers.clone(), &Resolver, &prog.record()).unwrap());
        let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).unwrap();
        let mapped = bpftime_jit::link::link(&object).unwrap().load(restored, "prog").unwrap();
        let interp = Interpreter::new(prog);
        for engine in [&jit as &dyn Engine, &interp, &mapped] {
            assert_eq!(run(engine, Context::None, &RunOptions::default()), Ok(want));
        }
    }
}

/// Counted loops run a copy without the budget check when the budget covers their worst case
/// (`bpftime_vm::loops`): at every budget, around and between the loops' worst cases, every
/// engine must end exactly as the interpreter does, which charges every back edge.
/// Walked loops (`bpftime_vm::walks`) check their walks once on entry and run a copy without
/// those checks, settling the budget on the way out: at every bound (some exactly filling
/// their region, some one element past it) and every budget, the JIT ends as the interpreter
/// does, with the same result, memory, fault and instruction.
#[test]
fn walked_loops_end_as_the_interpreter_at_every_length_and_budget() {
    use bpftime_vm::asm::assemble;
    use bpftime_vm::walks::walked_loops;
    let programs = [
        // A copy (clang's shape, tested at the bottom): in bounds up to n = 28, then a loop
        // that spends budget.
        "r5 = *(u8 *)(r1 + 0)\nr2 = r1\nr2 += 8\nr3 = 0\nif r5 == 0 goto +5\nr4 = *(u8 *)(r2 + 0)\n*(u8 *)(r2 + 28) = r4\nr2 += 1\nr3 += 1\n\
         if r3 < r5 goto -5\nr6 = 0\nr6 += 1\nif r6 < 10 goto -2\nr0 = *(u64 *)(r1 + 32)\nr0 += r3\nexit",
        // Entered in its middle, two latches of different lengths, an `exit` inside: u32s up
        // to n = 15.
        "r0 = 0\nr2 = *(u8 *)(r1 + 0)\nif r2 == 0 goto +7\nr3 = 0\nr1 += 4\ngoto +5\nr0 += r7\nr1 += 4\nr3 += 1\nif r3 < r2 goto +1\nexit\n\
         r7 = *(u32 *)(r1 + 0)\nif r7 > 0x20000000 goto -7\nr7 = 1\ngoto -9",
        // clang's switch in a loop: a latch per case, each to the part of the step its case
        // needs (three targets, four lengths), the test before the entry: bytes up to n = 56;
        // then a loop that spends budget.
        "r2 = *(u8 *)(r1 + 0)\nr0 = 0\nif r2 == 0 goto +7\nr3 = 0\nr1 += 8\ngoto +5\nr0 += 7\nr0 ^= r3\nr3 += 1\nif r3 < r2 goto +1\ngoto +10\n\
         r5 = *(u8 *)(r1 + 0)\nr1 += 1\nr5 &= 3\nif r5 == 0 goto -9\nif r5 == 1 goto -9\nif r5 == 2 goto +2\nr0 += 1\ngoto -11\n\
         r0 *= 3\ngoto -13\nr6 = 0\nr6 += 1\nif r6 < 10 goto -2\nexit",
        // Tested at the top, walking down, with a break on a value, then a loop that spends
        // budget.
        "r2 = *(u8 *)(r1 + 0)\nr4 = r1\nr4 += 60\nr3 = 0\nr0 = 0\nif r3 >= r2 goto +6\nr5 = *(u32 *)(r4 + 0)\nif r5 == 0x1b1a1918 goto +4\n\
         r0 += r5\nr4 += -4\nr3 += 1\ngoto -7\nr6 = 0\nr6 += 1\nif r6 < 10 goto -2\nr0 += r3\nexit",
        // A store on the way out of the loop, in its last iteration: in bounds up to n = 55.
        "r2 = *(u8 *)(r1 + 0)\nr4 = r1\nr4 += 8\nr3 = 0\nr0 = *(u8 *)(r4 + 0)\nr3 += 1\nif r3 < r2 goto +3\n*(u8 *)(r4 + 1) = r3\nr0 = r3\nexit\n\
         r4 += 1\ngoto -8",
        // Counting down to zero (clang's `for (i = n; i > 0; i--) v[i - 1]`): u64s up to n = 7.
        "r2 = *(u8 *)(r1 + 0)\nr0 = 0\nif r2 == 0 goto +10\nr3 = r2\nr3 <<= 3\nr1 += r3\nr4 = *(u64 *)(r1 + 0)\nr0 ^= r4\nr0 += r2\n\
         r1 += -8\nr2 += -1\nif r2 == 0 goto +1\ngoto -7\nr6 = 0\nr6 += 1\nif r6 < 10 goto -2\nexit",
        // `while (left != 0)` by 8 bytes: u64s up to n = 7; without the shift, a bound that is
        // not a multiple of 8 is never met (the loop runs until it faults).
        "r2 = *(u8 *)(r1 + 0)\nr0 = 0\nif r2 == 0 goto +7\nr2 <<= 3\nr1 += 8\nr3 = *(u64 *)(r1 + 0)\nr0 += r3\nr1 += 8\nr2 += -8\n\
         if r2 != 0 goto -5\nexit",
        "r2 = *(u8 *)(r1 + 0)\nr0 = 0\nif r2 == 0 goto +6\nr1 += 8\nr3 = *(u64 *)(r1 + 0)\nr0 += r3\nr1 += 8\nr2 += -8\n\
         if r2 != 0 goto -5\nexit",
        // Down by 3 while above 1: from n - 3 = 2 mod 3 it steps past zero, wraps and runs on
        // until it faults.
        "r2 = *(u8 *)(r1 + 0)\nr0 = 0\nr1 += 8\nr3 = *(u8 *)(r1 + 0)\nr0 += r3\nr1 += 1\nr2 += -3\nif r2 > 1 goto -5\nr0 += r2\nexit",
        // A walked loop at the end of a function called by one that spends budget after the
        // call: the callee must leave the budget exactly as the interpreter does.
        "r6 = r1\ncall sub\nr7 = 0\nspend:\nr7 += 1\nif r7 < 10 goto spend\nexit\n\
         sub:\nr2 = *(u8 *)(r1 + 0)\nr0 = 0\nr3 = 0\nif r2 == 0 goto done\nr1 += 8\n\
         walk:\nr4 = *(u8 *)(r1 + 0)\nr0 += r4\nr1 += 1\nr3 += 1\nif r3 < r2 goto walk\ndone:\nexit",
        // Stores up the stack: in bounds up to n = 8.
        "r2 = *(u8 *)(r1 + 0)\nr4 = r10\nr4 += -64\nr3 = 0\n*(u64 *)(r4 + 0) = r3\nr4 += 8\nr3 += 1\nif r3 < r2 goto -4\n\
         r0 = *(u64 *)(r10 - 64)\nr0 += r3\nexit",
    ];
    for src in programs {
        let code = assemble(src).unwrap();
        let prog = Arc::new(verify_bytecode(&to_bytecode(&code), Arc::new(test_helpers()), &TestMaps).expect("verifies"));
        let walked = walked_loops(prog.insns(), 0, prog.len(), &|pc| prog.is_resolved(pc));
        assert!(walked.iter().any(|w| w.walks.iter().any(|a| !prog.access(a.pc).proven)), "{src}: no unproven walk");
        let interp = Interpreter::new(prog.clone());
        let jit = JitProgram::compile(prog.clone()).unwrap();
        let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).unwrap();
        let mapped = bpftime_jit::link::link(&object).and_then(|i| i.load(prog.clone(), "prog")).unwrap();
        let mut outcomes = std::collections::HashSet::new();
        let mut mem = vec![0u8; 64];
        for n in 0..64u8 {
            for budget in (0..300).step_by(3).chain([10_000]) {
                let opts = RunOptions { budget, ..RunOptions::default() };
                // One buffer for every run, so that fault addresses are the same.
                let initial: Vec<u8> = std::iter::once(n).chain(1..64u8).collect();
                mem.copy_from_slice(&initial);
                let want = run(&interp, Context::Mem(&mut mem), &opts);
                let want_mem = mem.clone();
                for (engine, name) in [(&jit as &dyn Engine, "JIT"), (&mapped, "object code")] {
                    mem.copy_from_slice(&initial);
                    let got = run(engine, Context::Mem(&mut mem), &opts);
                    assert_eq!(got, want, "{src}: {name} at n = {n}, budget {budget}");
                    assert_eq!(mem, want_mem, "{src}: {name}'s memory at n = {n}, budget {budget}");
                }
                outcomes.insert(match &want {
                    Ok(_) => "ok",
                    Err(RunError { fault: bpftime_vm::Fault::OutOfBounds { .. }, .. }) => "out of bounds",
                    Err(_) => "stopped",
                });
            }
        }
        // Every program but the one that breaks out first also runs out of its region.
        let expected = if src.contains("0x1b1a1918") { 2 } else { 3 };
        assert_eq!(outcomes.len(), expected, "{src}: {outcomes:?}");
    }
}

#[test]
fn counted_loops_end_as_the_interpreter_at_every_budget() {
    use bpftime_vm::asm::assemble;
    use bpftime_vm::loops::counted_loops;
    let programs = [
        // Two loops in a row, tested at the bottom: 27 units each, 33 at worst.
        "r0 = 0\nr1 = 0\nr0 += 3\nr1 += 1\nif r1 < 10 goto -3\nr2 = 0\nr0 += 5\nr2 += 2\nif r2 < 20 goto -3\nexit",
        // Entered in its middle, tested at the top, reading the context (clang's shape).
        "r0 = 0\nr3 = 0\nr2 = 60\ngoto +3\nif r3 > 40 goto +7\nr3 += 1\nif r3 >= r2 goto +5\nr4 = r1\nr4 += r3\nr4 = *(u8 *)(r4 + 0)\nr0 += r4\ngoto -8\nexit",
    ];
    for src in programs {
        let code = assemble(src).unwrap();
        let prog = Arc::new(verify_bytecode(&to_bytecode(&code), Arc::new(test_helpers()), &TestMaps).expect("verifies"));
        assert!(!counted_loops(prog.insns(), 0, prog.len()).is_empty(), "{src}: no counted loop");
        let interp = Interpreter::new(prog.clone());
        let jit = JitProgram::compile(prog.clone()).unwrap();
        let object = bpftime_jit::compile_object(&[("prog", &prog)], Default::default()).unwrap();
        let mapped = bpftime_jit::link::link(&object).and_then(|i| i.load(prog.clone(), "prog")).unwrap();
        let (mut ok, mut stopped) = (0, 0);
        for budget in 0..400 {
            let opts = RunOptions { budget, ..RunOptions::default() };
            let mut mem: Vec<u8> = (0..64u8).collect();
            let want = run(&interp, Context::Mem(&mut mem), &opts);
            for (engine, name) in [(&jit as &dyn Engine, "JIT"), (&mapped, "object code")] {
                let mut mem: Vec<u8> = (0..64u8).collect();
                assert_eq!(run(engine, Context::Mem(&mut mem), &opts), want, "{src}: {name} at budget {budget}");
            }
            if want.is_ok() {
                ok += 1;
            } else {
                stopped += 1;
            }
        }
        assert!(ok > 0 && stopped > 0, "{src}: the budgets tried must both stop it and let it end");
    }
}
