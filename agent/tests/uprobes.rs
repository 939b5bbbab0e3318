//! The agent in real processes: C targets run under LD_PRELOAD=libbpftime.so with
//! clang-built uprobe programs; counts, arguments and return values are checked exactly.

use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{links, EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::{build_example, build_go_target, build_target};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

/// libbpftime.so, built beside this test binary's directory.
fn agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join("libbpftime.so");
    assert!(p.exists(), "{} is missing: build the workspace (cargo build -p bpftime-agent)", p.display());
    p
}

struct Session {
    name: String,
    maps: Vec<Map>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = ShmRegion::remove(&self.name);
    }
}

/// Loads an example into a fresh region and writes a link for each uprobe section.
fn session(tag: &str, example: &str, engine: EngineKind) -> Session {
    let name = format!("bpftime-agent-test-{tag}-{}", std::process::id());
    let _ = ShmRegion::remove(&name);
    let region = Arc::new(ShmRegion::create(&name, 32 << 20).unwrap());
    let obj = Object::parse(&std::fs::read(build_example(example)).unwrap()).unwrap();
    let rt = Runtime::new(region.clone(), engine);
    let loaded = rt.load_object(&obj).unwrap();
    links::store_uprobes(&region, &loaded.programs).unwrap();
    Session { name, maps: loaded.maps }
}

fn run_traced(s: &Session, cmd: &mut Command, engine: &str) -> Output {
    cmd.env("LD_PRELOAD", agent()).env("BPFTIME_SHM", &s.name).env("BPFTIME_ENGINE", engine).output().expect("run target")
}

/// The session's map named `name`.
fn map_named<'s>(s: &'s Session, name: &str) -> &'s Map {
    s.maps.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("no map `{name}`"))
}

fn value(m: &Map, k: u32) -> u64 {
    let mut v = [0u8; 8];
    m.lookup(&k.to_le_bytes(), &mut v).unwrap();
    u64::from_le_bytes(v)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn counts_arguments_and_return_values_exactly_with_8_threads() {
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let s = session(&format!("calls-{engine}"), "uprobe_calls", kind);
        let iters = 20_000u64;
        let threads = 8u64;
        let out = run_traced(&s, Command::new(build_target("calls", false)).args([iters.to_string(), threads.to_string()]), engine);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Each thread sums add(i, 2i) = 3i for i < iters.
        let per_thread = 3 * iters * (iters - 1) / 2;
        assert_eq!(text(&out.stdout).trim(), format!("sum {} fact 3628800 tiny 0", per_thread * threads));
        let stats = &s.maps[0];
        assert_eq!(value(stats, 0), iters * threads, "{engine}: add() calls");
        assert_eq!(value(stats, 1), per_thread * threads, "{engine}: sum of add() results seen by the uretprobe");
        let (a, b) = (value(stats, 2), value(stats, 3));
        assert_eq!(b, 2 * a, "{engine}: arguments of the last call");
        assert_eq!(value(stats, 4), 10, "{engine}: fact() entries through recursion");
        assert_eq!(value(stats, 5), 10, "{engine}: fact() returns through recursion");
        assert_eq!(value(stats, 6), 3628800, "{engine}: largest fact() result");
        assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    }
}

#[test]
fn probes_a_libc_function() {
    let s = session("malloc", "malloc_latency", EngineKind::Jit);
    let n = 50_000u64;
    let out = run_traced(&s, Command::new(build_target("malloc_workload", false)).arg(n.to_string()), "jit");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sum = |m: &Map| (0..32).map(|k| value(m, k)).sum::<u64>();
    let sizes = sum(&s.maps[0]);
    let latencies = sum(&s.maps[1]);
    // The workload's mallocs, plus the one stdio makes for its buffer; none of the agent's own.
    assert_eq!(sizes, n + 1, "{sizes} malloc calls for {n} in the workload");
    assert_eq!(latencies, sizes, "every malloc returned through the uretprobe");
    assert_eq!(s.maps[2].keys().len(), 0, "no start time left behind");
    // Requested sizes are 1 << (seed % 16): buckets 0..16 only, besides libc's own.
    assert!((0..16).all(|k| value(&s.maps[0], k) > 0));
}

#[test]
fn probes_a_library_loaded_later_with_dlopen() {
    let s = session("dlopen", "uprobe_plugin", EngineKind::Jit);
    let lib = build_target("plugin", true);
    let n = 1000u64;
    let out = run_traced(&s, Command::new(build_target("dlopen_host", false)).arg(&lib).arg(n.to_string()), "jit");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(value(&s.maps[0], 0), n + 1, "calls after dlopen, and the library's constructor's in it");
    assert_eq!(value(&s.maps[0], 1), n * (n - 1) / 2, "sum of first arguments");
}

/// A function shorter than a jump (`xor eax, eax; ret`) is attached as the kernel attaches it:
/// the jump spills into the alignment padding after it; entry and return probes both fire and
/// the function's result is unchanged.
#[test]
fn tiny_functions_attach_through_their_padding() {
    let s = session("tiny", "uprobe_tiny", EngineKind::Jit);
    let out = run_traced(&s, Command::new(build_target("calls", false)).arg("10"), "jit");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "sum 135 fact 3628800 tiny 0");
    assert!(!text(&out.stderr).contains("cannot attach"), "{}", text(&out.stderr));
    assert_eq!((value(&s.maps[0], 0), value(&s.maps[0], 1), value(&s.maps[0], 2)), (1, 1, 100), "one entry, one return, result 0");
}

/// A caller keeps values in xmm3 and xmm12 across a call to a leaf of its own module (as
/// `-fipa-ra` allows): entry and return probes whose programs copy through helpers keep them,
/// and keep no upper half that program's code never names (`BPFTIME_VERBOSE` says what).
#[test]
fn probes_keep_the_vector_registers_the_module_names() {
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let s = session(&format!("vectors-{engine}"), "uprobe_vectors", kind);
        let n = 5000u64;
        let out = run_traced(&s, Command::new(build_target("vectors", false)).arg(n.to_string()).env("BPFTIME_VERBOSE", "1"), engine);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // leaf(i, 2) = 3i + 2.
        let sum = 3 * n * (n - 1) / 2 + 2 * n;
        assert_eq!(text(&out.stdout).trim(), format!("sum {sum} kept {n}"), "{engine}");
        assert_eq!((value(&s.maps[1], 0), value(&s.maps[1], 1)), (n, sum), "{engine}: calls and results");
        let stderr = text(&out.stderr);
        let line = stderr.lines().find(|l| l.contains("attached uprobe `on_leaf`")).unwrap_or_else(|| panic!("{stderr}"));
        // The results (the leaf reads no vector argument) at full width; the low halves (gcc's
        // code names xmm registers at 128 bits only)
        // of those this module names (xmm2-4 and xmm12; a Win64 `ms_abi` caller here would keep
        // values in them), no others.
        assert!(line.contains("vector registers kept: xmm0-1 (") && line.contains(" + xmm2-4, xmm12 (128 bits) at entry"), "{line}");
    }
    // BPFTIME_VECTORS=all: every register at full width, as before the scan.
    let s = session("vectors-all", "uprobe_vectors", EngineKind::Jit);
    let out = run_traced(&s, Command::new(build_target("vectors", false)).arg("100").env("BPFTIME_VERBOSE", "1").env("BPFTIME_VECTORS", "all"), "jit");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("attached uprobe `on_leaf`")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("kept: xmm0-15 (") || line.contains("kept: xmm0-31 ("), "{line}");
    assert!(!line.contains(" + xmm"), "one width for all: {line}");
}

/// With AVX, a value in ymm0 (upper half not zero) passes whole through a call whose entry
/// and return are probed, and a call made with the upper halves clean (`vzeroupper`) leaves
/// them clean (XINUSE, `xgetbv` 1), as the kernel's uprobes leave them. The stubs loaded
/// xmm0-1 back at full width, which left the upper halves in use after every hit: legacy SSE
/// code then pays on Intel cores (the agent's own handlers and the application's; on this VM's
/// Xeon an entry and a return probe on one function cost 300 ns a call instead of 50).
#[test]
fn probes_leave_the_upper_halves_of_vector_registers_as_they_found_them() {
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let s = session(&format!("upper-{engine}"), "uprobe_vectors", kind);
        let n = 2000u64;
        let out = run_traced(&s, Command::new(build_target("upper_halves", false)).arg(n.to_string()), engine);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        if stdout.trim() == "no AVX with XINUSE" {
            eprintln!("skipped: this CPU has no AVX, or does not report which state is in use (xgetbv 1)");
            return;
        }
        // Twice leaf(i, 1) = 3i + 1 per round.
        let sum = 2 * (3 * n * (n - 1) / 2 + n);
        assert_eq!(stdout.trim(), format!("sum {sum} upper {n} clean {n}"), "{engine}");
        assert_eq!((value(&s.maps[1], 0), value(&s.maps[1], 1)), (2 * n, sum), "{engine}: calls and results");
    }
}

#[test]
fn standalone_program_mode() {
    // BPFTIME_PROGRAM: the agent loads the object itself; with BPFTIME_SHM naming an existing
    // region, the maps land there for us to read.
    let name = format!("bpftime-agent-test-standalone-{}", std::process::id());
    let _ = ShmRegion::remove(&name);
    let region = Arc::new(ShmRegion::create(&name, 32 << 20).unwrap());
    let out = Command::new(build_target("calls", false))
        .args(["500", "2"])
        .env("LD_PRELOAD", agent())
        .env("BPFTIME_SHM", &name)
        .env("BPFTIME_PROGRAM", build_example("uprobe_calls"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats = Map::open_by_name(&region, "stats").unwrap();
    assert_eq!(value(&stats, 0), 1000);
    assert_eq!(links::list(&region).len(), 4, "the agent recorded its links");
    let _ = ShmRegion::remove(&name);
}

#[test]
fn runaway_probes_end_quickly_and_the_application_runs_on() {
    // Before the budget counted loop length and bpf_loop callbacks, one hit of `spin` cost
    // 55 ms on the JIT and 1.8 s on the interpreter, and one hit of `many_loops` seconds.
    // The default probe budget keeps a hit under about a millisecond in a release build; the
    // bound here is loose (a debug build of the agent): 300 hits of both programs in 20 s of
    // CPU time (not wall time: the machine may be busy; the interpreter's took 10.1 s once
    // beside the other tests on two CPUs), where the old budget needed 16 s (JIT) to 9
    // minutes.
    for engine in ["jit", "interp"] {
        let kind = if engine == "jit" { EngineKind::Jit } else { EngineKind::Interp };
        let s = session(&format!("runaway-{engine}"), "runaway", kind);
        let mut target = Command::new(build_target("calls", false));
        target.args(["300", "1"]).env("LD_PRELOAD", agent()).env("BPFTIME_SHM", &s.name).env("BPFTIME_ENGINE", engine);
        let (out, took) = bpftime_tests::output_and_cpu_time(&mut target);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), format!("sum {} fact 3628800 tiny 0", 3 * 300 * 299 / 2));
        assert_eq!((value(&s.maps[0], 0), value(&s.maps[0], 1)), (300, 300), "{engine}: every hit ran");
        let err = text(&out.stderr);
        assert_eq!(err.matches("loop budget exhausted").count(), 2, "{engine}: each program reports once:\n{err}");
        assert!(err.contains("BPFTIME_BUDGET"), "{err}");
        assert!(took < std::time::Duration::from_secs(20), "{engine}: 300 runaway hits took {took:?} of CPU time");
    }
}

/// Functions of 1 to 4 bytes with no padding after them (no jump fits) are probed with int3
/// traps, as the kernel probes everything: entries, returns (also through a 2-byte tail jump
/// into another probed function) and a probe on a 1-byte instruction mid-function, on both
/// engines, with exact counts and unchanged results; also from a signal handler installed with
/// every signal in its mask (SIGTRAP is kept out of it: the kernel kills a thread that meets an
/// int3 with SIGTRAP blocked).
#[test]
fn functions_too_short_for_a_jump_are_probed_with_int3_traps() {
    for (engine, kind, mode) in [("jit", EngineKind::Jit, ""), ("interp", EngineKind::Interp, ""), ("jit", EngineKind::Jit, "masked")] {
        let s = session(&format!("traps-{engine}{mode}"), "uprobe_traps", kind);
        let n = 2000u64;
        let mut cmd = Command::new(build_target("tiny", false));
        cmd.arg(n.to_string()).env("BPFTIME_VERBOSE", "1");
        if !mode.is_empty() {
            cmd.arg(mode);
        }
        let out = run_traced(&s, &mut cmd, engine);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{mode}: {:?} {err}", out.status);
        // sum(i + 1) and sum(i + 2) for i < n
        let (jmp2, add4) = (n * (n - 1) / 2 + n, n * (n - 1) / 2 + 2 * n);
        // sum(i + 2) for i < n
        let sub5 = n * (n - 1) / 2 + 2 * n;
        assert_eq!(text(&out.stdout).trim(), format!("ret1 {n} jmp2 {jmp2} zero3 0 add4 {add4} sub5 {sub5}"));
        assert_eq!(err.matches("with an int3 trap").count(), 8, "{engine}: every probe but t_sub5's is a trap:\n{err}");
        let v: Vec<u64> = (0..12).map(|k| value(&s.maps[0], k)).collect();
        // t_jmp2 jumps into t_add4: its probes fire for both calls, as the kernel's do.
        assert_eq!(v, [n, n, jmp2, jmp2, n, n, 2 * n, 2 * n, jmp2 + add4, jmp2 + add4, n, sub5], "{engine}: counts and sums");
    }
}

/// Probe hits from a signal handler that lands inside a probe handler or a uretprobe's return
/// path run at the next nesting level: no crash, no lost hit (or a miss counted where bpftool
/// shows `recursion_misses`), with the handler on the thread's stack (installed by signal())
/// or on an alternate signal stack (sigaction with SA_ONSTACK), with either way of running
/// return probes; 100 runs on the JIT, 10 on the interpreter. The handler always runs on the
/// thread's stack or its signal stack, never on the stack hits run on, and no signal lands while
/// a hit's code runs there: it waits until the stub is off it, as the kernel's wait for a
/// uprobe's programs and its way back.
#[test]
fn probes_hit_from_signal_handlers_run_nested_and_never_crash() {
    let runs = |engine: &str| if engine == "jit" { 100 } else { 10 };
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        for run in 0..runs(engine) {
            // The handler on the interrupted stack, on a signal stack below it, or above it.
            let mode = ["stack", "altstack", "highaltstack"][run % 3];
            // Return probes by patched rets, and (every other pair of runs) by the return
            // address replaced at entry, whose shadow stack signal handlers must not corrupt.
            let returns = if run % 4 < 2 { "ret" } else { "stack" };
            let s = session(&format!("signals-{engine}"), "uprobe_signals", kind);
            let out = run_traced(&s, Command::new(build_target("signals", false)).args(["5000", mode]).env("BPFTIME_URETPROBE", returns), engine);
            let err = text(&out.stderr);
            assert!(out.status.success(), "{engine} run {run} ({mode}): {:?}\n{err}", out.status);
            let stdout = text(&out.stdout);
            let words: Vec<&str> = stdout.split_whitespace().collect();
            let (calls, sum): (u64, u64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert!(calls > 5000, "{engine}: the handler ran (signals sent while add() was probed)");
            assert_eq!(words[5], "0", "{engine} run {run} ({mode}): the handler ran on a stack that is neither the thread's nor its signal stack");
            assert_eq!(words[7], "0", "{engine} run {run} ({mode}): signals that landed while a hit ran on the agent's stack");
            let region = ShmRegion::open(&s.name).unwrap();
            let misses: Vec<u64> = bpftime_runtime::progs::list(&region).iter().map(|p| p.recursion_misses).collect();
            let v: Vec<u64> = (0..4).map(|k| value(&s.maps[0], k)).collect();
            assert_eq!(v[0] + misses[0], calls, "{engine} run {run} ({mode}): entries {v:?} + misses {misses:?} = calls");
            assert_eq!(v[2] + misses[1], calls, "{engine} run {run} ({mode}): returns {v:?} + misses {misses:?} = calls");
            if misses == [0, 0] {
                assert_eq!((v[1], v[3]), (sum, sum), "{engine} run {run} ({mode}): arguments and results");
            }
        }
    }
}

/// `bpf_override_return` at a function's entry returns the given value without running the
/// function (its return probe sees that value), `ureplace` makes the program the function,
/// and an int3 probe overrides too; the target's output shows it, on both engines.
#[test]
fn override_return_and_ureplace_change_what_the_function_returns() {
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let s = session(&format!("override-{engine}"), "uprobe_override", kind);
        let n = 1000u64;
        let out = run_traced(&s, Command::new(build_target("override", false)).arg(n.to_string()), engine);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Every password accepted; compute(i) = i + 1000 instead of 3i.
        assert_eq!(text(&out.stdout).trim(), format!("accepted {n} sum {}", n * (n - 1) / 2 + 1000 * n), "{engine}");
        let v: Vec<u64> = (0..4).map(|k| value(&s.maps[0], k)).collect();
        assert_eq!(v, [n, n, n, n], "{engine}: entries, returns, returns seeing 0, replaced calls");
        // Without the agent the target refuses half the passwords and computes 3i.
        let plain = Command::new(build_target("override", false)).arg(n.to_string()).output().unwrap();
        assert_eq!(text(&plain.stdout).trim(), format!("accepted {} sum {}", n / 2, 3 * n * (n - 1) / 2));
        // The same object on the tiny target: t_zero3 (an int3 probe) returns 7.
        let out = run_traced(&s, Command::new(build_target("tiny", false)).arg("10"), engine);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "ret1 10 jmp2 55 zero3 70 add4 65 sub5 65", "{engine}");
    }
}

/// A hit runs its handlers on a stack of the agent's, not the application's: what it leaves on
/// the application's stack is the frame of registers the kernel's would show (`pt_regs`), so a
/// probe on a function running on a small stack (a goroutine's starts at a few kilobytes, and
/// Go grows it only from Go code) cannot overflow it. Measured by the target, which paints the
/// stack below the call, for every hit (the thread's first one maps the agent's stack before it
/// calls anything). A thread's stack is unmapped when the thread exits.
#[test]
fn hits_leave_the_applications_stack_alone() {
    for ((engine, kind), returns) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)].into_iter().zip(["ret", "stack"]) {
        // Return probes by a patched `ret` and by the return address replaced (the shared
        // return stub).
        let s = session(&format!("stack-{engine}"), "stack_use", kind);
        let out = run_traced(&s, Command::new(build_target("stack_use", false)).args(["20", "100"]).env("BPFTIME_URETPROBE", returns), engine);
        assert!(out.status.success(), "{engine}: {out:?}");
        let stdout = text(&out.stdout);
        let used: Vec<u64> = stdout.lines().filter_map(|l| l.strip_prefix("stack used: ")?.strip_suffix(" bytes")?.parse().ok()).collect();
        assert_eq!(used.len(), 20, "{stdout}");
        assert!(used.iter().all(|&b| b <= 512), "{engine}: bytes of the application's stack each hit used: {used:?}");
        assert!(stdout.contains(&format!("sum {}", (0..20).map(|i| 2 * i).sum::<u64>())), "{stdout}");
        // A thread's handler stack goes with it: 100 threads that each hit a probe leave no
        // mapping behind.
        let grew: i64 = stdout.lines().find_map(|l| l.strip_prefix("mappings grew by ")?.parse().ok()).expect("the threads ran");
        assert!(grew <= 2, "{engine}: 100 threads left {grew} mappings behind");
        // Every entry and return counted: 40 by the main thread, 2 by each other thread.
        let mut counts: Vec<u64> = map_named(&s, "hits")
            .keys()
            .iter()
            .map(|k| {
                let mut v = [0u8; 8];
                map_named(&s, "hits").lookup(k, &mut v).unwrap();
                u64::from_le_bytes(v)
            })
            .collect();
        counts.sort_unstable();
        assert_eq!(counts.len(), 64, "{engine}: the map holds 64 threads");
        assert_eq!(counts.last(), Some(&40), "{engine}: 20 entries and 20 returns on the main thread");
        assert!(counts[..63].iter().all(|&c| c == 2), "{engine}: {counts:?}");
    }
}

/// A signal a program sends (`bpf_send_signal_thread`) waits for the hit's work to end, as on
/// the kernel, whose uprobe delivers it on the way back to the probed code. Here the target's
/// handler leaves by `siglongjmp`, once from an entry probe and once from a return probe: the
/// signal reaches it only once the stub is off the handler stack, so the stack is free for the
/// hits after (delivered while the stub still held it, the jump left it held for good, and every
/// later hit ran its handlers on the application's stack, over 4 KiB of it). Then a timer's
/// handler leaves a blocking `read` the same way, which our work around the call (system call
/// interception) held the handler stack for: the jump abandons that work, and the stack is free
/// again. The handler's own mark (hits inside a handler stay on its stack) is freed by the first
/// hit above it, which still runs where it is.
#[test]
fn a_handler_that_jumps_out_after_a_hit_leaves_the_handler_stack_free() {
    for ((engine, kind), returns) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)].into_iter().zip(["ret", "stack"]) {
        let s = session(&format!("stack-jump-{engine}"), "stack_use", kind);
        let out = run_traced(&s, Command::new(build_target("stack_use", false)).args(["20", "0", "jump"]).env("BPFTIME_URETPROBE", returns), engine);
        assert!(out.status.success(), "{engine}: {out:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("jumped 3\n"), "{engine}: the three signals reached the handler: {stdout}");
        let mut reads = [0u8; 8];
        map_named(&s, "reads").lookup(&0u32.to_le_bytes(), &mut reads).unwrap();
        assert!(u64::from_le_bytes(reads) > 0, "{engine}: system calls intercepted");
        let used: Vec<u64> = stdout.lines().filter_map(|l| l.strip_prefix("stack used: ")?.strip_suffix(" bytes")?.parse().ok()).collect();
        assert_eq!(used.len(), 20, "{stdout}");
        assert!(used[1..].iter().all(|&b| b <= 512), "{engine}: bytes of the application's stack each hit after the jumps used: {used:?}");
        // Two entries and one return for the calls left by the jumps (the first never ran),
        // then 20 of each.
        let tid = map_named(&s, "hits").keys();
        assert_eq!(tid.len(), 1, "{engine}: one thread");
        let mut v = [0u8; 8];
        map_named(&s, "hits").lookup(&tid[0], &mut v).unwrap();
        assert_eq!(u64::from_le_bytes(v), 43, "{engine}: entries and returns");
    }
}

/// A Go program's goroutines run on stacks that start at 2 KiB and grow only from Go code (a
/// function's prologue checks for its own frame, nothing more): hits on a Go function run their
/// handlers on the agent's stack, so 2,000 goroutines calling a probed function 50 times each,
/// up to 23 frames deep, neither crash nor corrupt each other; entries, returns, arguments (Go's
/// register ABI: ax, bx) and results are counted exactly, on both engines.
#[test]
fn probes_on_go_functions_run_beside_goroutine_stacks() {
    let target = build_go_target("goroutines");
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        for run in 0..3 {
            let s = session(&format!("go-{engine}"), "go_calls", kind);
            let out = run_traced(&s, Command::new(&target).arg("2000").env("BPFTIME_VERBOSE", "1"), engine);
            assert!(out.status.success(), "{engine} run {run}: {:?}\n{}", out.status, text(&out.stderr));
            // Go's internal ABI passes values in xmm0-14 and keeps xmm15 zero: every low half is
            // kept, though Go's code names few of them.
            let stderr = text(&out.stderr);
            let line = stderr.lines().find(|l| l.contains("attached uprobe") && l.contains("at entry")).unwrap_or_else(|| panic!("{stderr}"));
            assert!(line.contains("xmm15") || line.contains("-15 ("), "{line}");
            // Each goroutine sums add(i, 1) for i < 50: 1275.
            assert_eq!(text(&out.stdout).trim(), format!("sum {}", 2000 * 1275), "{engine}");
            let v: Vec<u64> = (0..4).map(|k| value(&s.maps[0], k)).collect();
            assert_eq!(v, [100_000, 2000 * 1275, 100_000, 2000 * 1275], "{engine} run {run}: entries, argument sums, returns, result sums");
        }
    }
}
