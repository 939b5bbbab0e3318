//! The `bpftime` binary and the conformance plugin, run as processes.

use bpftime_tests::clang::build_example;
use bpftime_tests::conformance_vectors;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bpftime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpftime")).args(args).output().expect("run bpftime")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn vm_run_prints_r0_from_an_object_on_both_engines() {
    let obj = build_example("vm_functions");
    let obj = obj.to_str().unwrap();
    let mem = "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 06 00 00 00 07 00 00 00";
    let jit = bpftime(&["vm", "run", obj, "--mem", mem]);
    let interp = bpftime(&["vm", "run", obj, "--mem", mem, "--engine", "interp"]);
    assert!(jit.status.success(), "{}", text(&jit.stderr));
    assert!(text(&jit.stdout).starts_with("r0 = 0x"), "{}", text(&jit.stdout));
    assert_eq!(jit.stdout, interp.stdout);
    // Keeping every run-time check changes nothing a correct program computes.
    for engine in ["jit", "interp"] {
        let all = bpftime(&["vm", "run", obj, "--mem", mem, "--engine", engine, "--checks", "all"]);
        assert_eq!(all.stdout, jit.stdout, "{engine}: {}", text(&all.stderr));
    }
}

#[test]
fn a_context_shorter_than_the_proofs_need_is_checked_access_by_access() {
    // `r0 = *(u8 *)(r1 + 15); exit`: proven for a context of 16 bytes or more.
    let dir = std::env::temp_dir().join(format!("bpftime-cli-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("ctx15.bin");
    std::fs::write(&f, [0x71, 0x10, 0x0f, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let f = f.to_str().unwrap();
    let long = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 2a";
    for engine in ["jit", "interp"] {
        for checks in ["unproven", "all"] {
            let out = bpftime(&["vm", "run", f, "--mem", long, "--engine", engine, "--checks", checks]);
            assert_eq!(text(&out.stdout).lines().next(), Some("r0 = 0x2a (42)"), "{engine} {checks}: {}", text(&out.stderr));
            let out = bpftime(&["vm", "run", f, "--mem", "01 02 03 04 05 06 07 08", "--engine", engine, "--checks", checks]);
            assert_eq!(out.status.code(), Some(1), "{engine} {checks}");
            assert!(text(&out.stderr).contains("insn 0: out-of-bounds load of 1 bytes"), "{engine} {checks}: {}", text(&out.stderr));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vm_disasm_native_prints_each_functions_machine_code() {
    let obj = build_example("vm_functions");
    let out = bpftime(&["vm", "disasm", "--native", obj.to_str().unwrap()]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The entry and at least one bpf-to-bpf callee, each a real function: a frame set up and
    // a return.
    assert!(s.starts_with("; function 0 (eBPF insn 0): "), "{s}");
    assert!(s.contains("; function 1 (eBPF insn "), "{s}");
    assert!(s.matches("push rbp").count() >= 2 && s.matches("ret").count() >= 2, "{s}");
}

#[test]
fn vm_disasm_prints_llvm_syntax() {
    let obj = build_example("vm_functions");
    let out = bpftime(&["vm", "disasm", obj.to_str().unwrap()]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("call pc"), "{s}");
    assert!(s.contains("lock *(u64 *)"), "{s}");
}

/// `vm disasm --proofs` marks each access as the verifier left it: a clang-built opensnoop-like
/// program's context reads, stack stores and ring-buffer record writes are all proven.
#[test]
fn vm_disasm_shows_what_the_verifier_proved() {
    let obj = build_example("opensnoop");
    let out = bpftime(&["vm", "disasm", "--proofs", obj.to_str().unwrap(), "--section", "tracepoint/syscalls/sys_enter_openat"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("; proven (context)") && s.contains("; proven (stack)"), "{s}");
    let summary = s.lines().last().unwrap();
    let (proven, all) = summary.trim_start_matches("; ").split_once(" memory accesses").unwrap().0.split_once(" of ").unwrap();
    assert_eq!(proven, all, "{summary}");
    assert!(summary.contains("the context proofs need"), "{summary}");
}

/// A loop bounded by its input (the kernel would refuse it) has its access checked once per
/// entry into the loop: the sum is right when the input holds `n` values, and one value short
/// both engines fault at the same instruction.
#[test]
fn a_walked_loop_is_checked_on_entry_and_faults_as_the_interpreter() {
    let obj = build_example("vm_walk");
    let obj = obj.to_str().unwrap();
    let proofs = text(&bpftime(&["vm", "disasm", "--proofs", obj]).stdout);
    assert!(proofs.contains("checked on loop entry (context)") && proofs.contains("1 checked once per entry into their loop"), "{proofs}");
    let values = "01 00 00 00 02 00 00 00 03 00 00 00";
    for engine in ["jit", "interp"] {
        let fits = bpftime(&["vm", "run", obj, "--engine", engine, "--mem", &format!("03 00 00 00 00 00 00 00 {values}")]);
        assert_eq!(text(&fits.stdout).lines().next(), Some("r0 = 0xe (14)"), "{engine}: {}", text(&fits.stderr));
        let short = bpftime(&["vm", "run", obj, "--engine", engine, "--mem", &format!("04 00 00 00 00 00 00 00 {values}")]);
        assert_eq!(short.status.code(), Some(1), "{engine}");
        assert!(text(&short.stderr).contains("insn 7: out-of-bounds load of 4 bytes"), "{engine}: {}", text(&short.stderr));
    }
}

#[test]
fn errors_are_one_clear_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("bpftime-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x95, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], "not a multiple of 8"),
        (b"\x7fELF\x02\x01\x01 not really".to_vec(), "not an ELF object"),
        (vec![0xb7, 0x0a, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0], "verifier: insn 0: r10 is read-only"),
        (vec![0x79, 0x10, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0], "insn 0: out-of-bounds load of 8 bytes at 0x0"),
        (vec![0x05, 0, 0xff, 0xff, 0, 0, 0, 0], "verifier: insn 0: no path from here reaches an exit"),
        // r0 = 0; r0 += 1; if r0 != 0 goto -2; exit: a way out no run takes.
        (vec![0xb7, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 1, 0, 0, 0, 0x55, 0, 0xfe, 0xff, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0], "loop budget exhausted"),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let f = dir.join(format!("case{i}.bin"));
        std::fs::write(&f, bytes).unwrap();
        let out = bpftime(&["vm", "run", f.to_str().unwrap(), "--budget", "1000"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.starts_with("bpftime: ") && err.contains(want), "case {i}: {err}");
        assert_eq!(err.lines().count(), 1, "case {i}: {err}");
    }
    let out = bpftime(&["vm", "run", "/nonexistent/prog.o"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No such file"));
    // A CO-RE read of a field the kernel lacks, with no existence check around it.
    let obj = build_example("core_unguarded");
    let out = bpftime(&["vm", "run", obj.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("field `no_such_field` of `task_struct___local` not found in the kernel's BTF, and a run may reach this instruction"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The plugin protocol of the official runner: program as hex text on stdin, memory as one
/// argument of hex bytes separated by two spaces, r0 in hex on stdout.
#[test]
fn conformance_plugin_passes_every_vector_on_both_engines() {
    let Some(vectors) = conformance_vectors() else {
        println!("skip: no conformance vectors at {}", bpftime_tests::conformance_dir().display());
        return;
    };
    let mut failures = vec![];
    for engine in ["jit", "interp"] {
        for v in &vectors {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpftime-conformance-plugin"));
            if !v.mem.is_empty() {
                cmd.arg(v.mem.iter().map(|b| format!("{b:02x}  ")).collect::<String>());
            }
            cmd.args(["--engine", engine]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn plugin");
            let hex: String = v.program.iter().map(|b| format!("{b:02x} ")).collect();
            child.stdin.take().unwrap().write_all(hex.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let got = u64::from_str_radix(text(&out.stdout).trim().trim_start_matches("0x"), 16).ok();
            if !out.status.success() || got != Some(v.result) {
                failures.push(format!("{engine} {}: {:?} {}", v.name, got, text(&out.stderr)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn bpftime_shm(shm: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpftime")).arg("--shm").arg(shm).args(args).output().expect("run bpftime")
}

#[test]
fn vm_run_with_maps_dumps_them_as_json() {
    let obj = build_example("maps_globals");
    let out = bpftime(&["vm", "run", obj.to_str().unwrap(), "--mem", "02 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00", "--dump-maps", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["r0"], 3);
    let counts = v["maps"].as_array().unwrap().iter().find(|m| m["name"] == "counts").unwrap();
    assert_eq!(counts["entries"][0]["key"]["u64"], 2);
    assert_eq!(counts["entries"][0]["value"]["u64"], 12);
    assert!(text(&out.stderr).contains("bpf_trace_printk: hello: key 2 += 12"), "{}", text(&out.stderr));
}

#[test]
fn shm_load_map_prog_and_trace_commands() {
    let shm = format!("bpftime-cli-test-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    // Missing region: a clear error.
    let out = bpftime_shm(&shm, &["map", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist (create it with `bpftime shm create`)"), "{}", text(&out.stderr));
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "8M"]).status.success());
    let again = bpftime_shm(&shm, &["shm", "create"]);
    assert!(text(&again.stderr).contains("already exists"));
    let obj = build_example("maps_globals");
    let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("`counts` (hash)"), "{}", text(&out.stdout));
    let list = bpftime_shm(&shm, &["map", "list", "--json"]);
    let maps: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(maps.as_array().unwrap().len(), 8);
    let dump = bpftime_shm(&shm, &["map", "dump", ".rodata"]);
    assert!(text(&dump.stdout).contains("flags 0x80"), "{}", text(&dump.stdout));
    let progs = bpftime_shm(&shm, &["prog", "list"]);
    assert!(text(&progs.stdout).contains("`count` (uprobe/count)"), "{}", text(&progs.stdout));
    let info = bpftime_shm(&shm, &["shm", "info"]);
    assert!(text(&info.stdout).contains("8 maps, 1 programs, 0 links"), "{}", text(&info.stdout));
    let trace = bpftime_shm(&shm, &["trace", "--no-follow"]);
    assert!(trace.status.success());
    let bad = bpftime_shm(&shm, &["map", "dump", "nope"]);
    assert!(text(&bad.stderr).contains("no map named `nope`"));
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
}

/// The `calls` C target: `calls ITERS THREADS` calls add(i, 2i) ITERS times per thread.
fn calls_target() -> String {
    bpftime_tests::clang::build_target("calls", false).to_str().unwrap().to_string()
}

/// Value of `key` in a map from a JSON dump.
fn json_value(map: &serde_json::Value, key: u64) -> u64 {
    let e = map["entries"].as_array().unwrap().iter().find(|e| e["key"]["u64"] == key);
    e.map(|e| e["value"]["u64"].as_u64().unwrap()).unwrap_or(0)
}

#[test]
fn run_attaches_uprobes_in_a_real_process_and_prints_exact_counts() {
    let obj = build_example("uprobe_calls");
    let target = calls_target();
    for engine in ["jit", "interp"] {
        let out = bpftime(&["run", obj.to_str().unwrap(), "--json", "--engine", engine, "--", &target, "1000", "4"]);
        assert!(out.status.success(), "{engine}: {}", text(&out.stderr));
        // The target's stdout is its own; ours (JSON lines) goes to stderr.
        assert_eq!(text(&out.stdout), "sum 5994000 fact 3628800 tiny 0\n", "{engine}: results unchanged under probes");
        let stderr = text(&out.stderr);
        let v: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).expect("JSON");
        assert_eq!(v["exit_code"], 0);
        let stats = v["maps"].as_array().unwrap().iter().find(|m| m["name"] == "stats").expect("stats map");
        assert_eq!(json_value(stats, 0), 4000, "{engine}: add() calls");
        assert_eq!(json_value(stats, 1), 5994000, "{engine}: sum of add() results from the uretprobe");
        assert_eq!((json_value(stats, 4), json_value(stats, 5)), (10, 10), "{engine}: fact() entries and returns");
        assert_eq!(json_value(stats, 6), 3628800, "{engine}: largest fact() result");
    }
    // Human-readable by default, to stderr or to --output; the target's exit code is passed on.
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", &target, "10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stderr);
    assert!(s.contains("exited with 0") && s.contains("map 1 `stats`: array") && s.contains("  0 => 10\n"), "{s}");
    let file = std::env::temp_dir().join(format!("bpftime-run-output-{}", std::process::id()));
    let out = bpftime(&["run", "--output", file.to_str().unwrap(), obj.to_str().unwrap(), "--", &target, "10"]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&file).unwrap().contains("  0 => 10\n"));
    std::fs::remove_file(&file).unwrap();
}

/// The region `bpftime run` with this pid makes.
fn run_region(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/shm/bpftime-run-{pid}"))
}

/// Starts `bpftime run ARGS`, waits until its region exists and the command had time to start.
fn start_run(args: &[&str], stdout: Stdio) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_bpftime")).args(args).stdout(stdout).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..500 {
        if run_region(child.id()).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child
}

#[test]
fn run_removes_its_region_and_passes_the_status_on_in_every_case() {
    let obj = build_example("uprobe_calls");
    let obj = obj.to_str().unwrap();
    // The command fails.
    let child = Command::new(env!("CARGO_BIN_EXE_bpftime")).args(["run", obj, "--", "sh", "-c", "exit 3"]).output().unwrap();
    assert_eq!(child.status.code(), Some(3));
    // bpftime is interrupted (SIGINT, SIGTERM): the signal reaches the command, which ends.
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let child = start_run(&["run", obj, "--", "sleep", "30"], Stdio::null());
        let pid = child.id();
        assert!(run_region(pid).exists(), "region made");
        // SAFETY: kill(2) to our own child.
        unsafe { libc::kill(pid as i32, sig) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "signal {sig}: {}", text(&out.stderr));
        assert!(!run_region(pid).exists(), "signal {sig}: region removed");
    }
    // Our reader goes away (SIGPIPE for the command, EPIPE for us).
    let mut child = start_run(&["run", "--output", "/dev/stdout", obj, "--", &calls_target(), "10"], Stdio::piped());
    drop(child.stdout.take());
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "bpftime itself was not killed: {status:?}");
    assert!(!run_region(pid).exists(), "SIGPIPE: region removed");
    // --shm-size makes room for large maps.
    let out = bpftime(&["run", "--shm-size", "256M", obj, "--", &calls_target(), "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn run_prints_records_as_they_arrive_decoded_by_btf() {
    let obj = build_example("add_events");
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", &calls_target(), "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for (a, b) in [(0, 0), (1, -2), (2, -4)] {
        let want = format!("ringbuf `events`: {{ a: {a}, b: {b}, pid: ");
        assert!(err.contains(&want), "{want} in:\n{err}");
    }
    assert_eq!(err.matches("perf_event_array `perf_events` cpu ").count(), 3, "{err}");
    assert!(err.contains("comm: \"calls\" }"), "{err}");
    assert!(err.contains("40 bytes: 02 00 00 00 00 00 00 00 fc ff ff ff ff ff ff ff"), "{err}");
    // JSON lines, one per record.
    let out = bpftime(&["run", "--json", obj.to_str().unwrap(), "--", &calls_target(), "2"]);
    let events: Vec<serde_json::Value> = text(&out.stderr).lines().filter(|l| l.starts_with("{\"event\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 4, "{}", text(&out.stderr));
    assert!(events[1]["event"]["decoded"].as_str().unwrap().starts_with("{ a: 1, b: -2,"), "{:?}", events[1]);
}

#[test]
fn run_says_what_is_not_attached_and_why() {
    let obj = build_example("add_events");
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", &calls_target(), "1"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("`on_sched_switch` (section `tracepoint/sched/sched_switch`) is not attached: tracepoint `sched/sched_switch` is a kernel event"),
        "{err}"
    );
    assert!(err.contains("cannot attach `on_missing_binary` to /no/such/binary:f: /no/such/binary: no such file"), "{err}");
    assert!(err.contains("`on_unloaded_library` was never attached to libnotloaded.so:f: its binary was never loaded"), "{err}");
    // A statically linked program cannot be preloaded: nothing attaches, and we say so.
    let dir = std::env::temp_dir().join(format!("bpftime-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("calls-static");
    let src = bpftime_tests::repo_root().join("examples/targets/calls.c");
    let cc = Command::new("cc").args(["-O2", "-static", "-pthread"]).arg(&src).arg("-o").arg(&exe).output().unwrap();
    if !cc.status.success() {
        println!("skipping the static binary case: cc -static failed: {}", text(&cc.stderr));
        return;
    }
    let out = bpftime(&["run", build_example("uprobe_calls").to_str().unwrap(), "--", exe.to_str().unwrap(), "1"]);
    let err = text(&out.stderr);
    assert!(err.contains("`on_add` was never attached to /proc/self/exe:add: the agent never started"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_writes_links_that_start_attaches() {
    let shm = format!("bpftime-cli-start-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "16M"]).status.success());
    let obj = build_example("uprobe_calls");
    let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("`on_add` -> /proc/self/exe:add"), "{}", text(&out.stdout));
    let target = calls_target();
    let run = bpftime_shm(&shm, &["start", "--", &target, "500", "2"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).starts_with("sum 748500 "), "{}", text(&run.stdout));
    let dump = bpftime_shm(&shm, &["map", "dump", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("JSON");
    assert_eq!(json_value(&stats, 0), 1000, "add() calls seen through the shared region");
    assert_eq!(json_value(&stats, 1), 748500);
    // A second traced run adds to the same maps.
    assert!(bpftime_shm(&shm, &["start", "--", &target, "500", "2"]).status.success());
    let dump = bpftime_shm(&shm, &["map", "dump", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(json_value(&stats, 0), 2000);
    // The links say where they attached and how far they got.
    let links = text(&bpftime_shm(&shm, &["link", "list"]).stdout);
    assert!(links.contains("`on_add` (prog ") && links.contains("uprobe /proc/self/exe:add (Attached)"), "{links}");
    assert!(links.contains("uretprobe /proc/self/exe:fact (Attached)"), "{links}");
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
}

#[test]
fn programs_compile_once_at_load_and_every_process_maps_them() {
    let shm = format!("bpftime-cli-cache-{}", std::process::id());
    let cache = std::path::PathBuf::from(format!("/dev/shm/{shm}.code"));
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "16M"]).status.success());
    let obj = build_example("uprobe_calls");
    assert!(bpftime_shm(&shm, &["load", obj.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_dir(&cache).expect("a code cache beside the region").count(), 4, "one entry per program, made at load");
    let target = calls_target();
    let start = |envs: &[(&str, &str)]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_bpftime")).args(["--shm", &shm, "start", "--", &target, "500", "2"]).envs(envs.iter().copied()).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("sum 748500 "), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    for _ in 0..2 {
        let log = start(&[("BPFTIME_VERBOSE", "1")]);
        assert_eq!(log.matches("code cache: hit").count(), 4, "{log}");
        assert!(!log.contains("miss"), "{log}");
        // And what the first process learnt of the probed file's code and of the dynamic
        // linker's (whose `r_brk` is probed to follow libraries: two entries more), which the
        // second reads.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 6);
    }
    let log = start(&[("BPFTIME_VERBOSE", "1"), ("BPFTIME_CODE_CACHE", "off")]);
    assert!(!log.contains("code cache"), "{log}");
    let dump = bpftime_shm(&shm, &["map", "dump", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("JSON");
    assert_eq!(json_value(&stats, 0), 3000, "add() calls of three runs, cached code or not");
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
    assert!(!cache.exists(), "removing the region removes its code cache");
}

#[test]
fn ahead_of_time_objects_run_without_compiling_where_they_match() {
    let obj = build_example("uprobe_calls");
    let aot = std::env::temp_dir().join(format!("bpftime-aot-{}.o", std::process::id()));
    let out = bpftime(&["aot", "compile", obj.to_str().unwrap(), "-o", aot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("4 program(s)"), "{}", text(&out.stdout));
    // A relocatable x86-64 object whose programs are global functions.
    let elf = std::fs::read(&aot).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[16], elf[17]]), 1, "ET_REL");
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime.so");
    let traced = |checks: &str, native: &str| {
        let out = Command::new(calls_target())
            .arg("100")
            .env("LD_PRELOAD", &agent)
            .env("BPFTIME_PROGRAM", &aot)
            .env("BPFTIME_SHM", "bpftime-none")
            .env("BPFTIME_VERBOSE", "1")
            .env("BPFTIME_CHECKS", checks)
            .env("BPFTIME_AOT", native)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("sum 14850 "), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    let log = traced("unproven", "1");
    assert_eq!(log.matches("code cache: ahead-of-time code").count(), 4, "{log}");
    // Machine code runs only when asked for: else the eBPF object inside is verified and
    // compiled like any.
    let log = traced("unproven", "0");
    assert!(log.contains("is an ahead-of-time object: its eBPF object is verified and compiled here"), "{log}");
    assert!(!log.contains("code cache: ahead-of-time code"), "{log}");
    // Code compiled for other inputs (here: every check kept) is not used; the programs are
    // compiled instead and still count right.
    let log = traced("all", "1");
    assert_eq!(log.matches("ahead-of-time code not used").count(), 4, "{log}");
    // Nor is code from a file others may write.
    let mode = |m: u32| std::fs::set_permissions(&aot, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    mode(0o666);
    let out = bpftime(&["run", "--aot", aot.to_str().unwrap(), "--", &calls_target(), "100"]);
    assert!(!out.status.success() && text(&out.stderr).contains("machine code is run only from files owned by you or root"), "{}", text(&out.stderr));
    mode(0o644);
    // A loader compiles its own programs: --aot there is a mistake, said so.
    let out = bpftime(&["load", "--aot", "--", "true"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--aot takes an ahead-of-time object"), "{}", text(&out.stderr));
    // `bpftime run --aot` takes it too, and its command's processes map the code from the cache.
    let out = Command::new(env!("CARGO_BIN_EXE_bpftime"))
        .args(["run", "--aot", aot.to_str().unwrap(), "--", &calls_target(), "100"])
        .env("BPFTIME_VERBOSE", "1")
        .output()
        .unwrap();
    let log = text(&out.stderr);
    assert!(out.status.success() && log.contains("  0 => 100\n"), "{log}");
    assert_eq!(log.matches("code cache: hit").count(), 4, "{log}");
    std::fs::remove_file(&aot).unwrap();
}

/// The agent's own thread (here the one that follows the link table, as nothing is attached
/// at start) blocks every signal: a process-directed signal such as a timer's SIGALRM goes to
/// a thread of the application, whose blocking call it must interrupt.
#[test]
fn the_agents_thread_leaves_signals_to_the_application() {
    let shm = format!("bpftime-cli-signals-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "16M"]).status.success());
    let script = "for t in /proc/$$/task/*; do echo \"$(cat $t/comm) $(grep SigBlk $t/status)\"; done";
    let out = bpftime_shm(&shm, &["start", "--", "bash", "-c", script]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let threads = text(&out.stdout);
    let ours = threads.lines().find(|l| l.starts_with("bpftime-links")).unwrap_or_else(|| panic!("the agent's thread: {threads}"));
    let alarm = 1u64 << (libc::SIGALRM - 1);
    let blocked = |line: &str| u64::from_str_radix(line.rsplit('\t').next().unwrap_or("").trim(), 16).unwrap_or(0);
    assert_eq!(blocked(ours) & alarm, alarm, "{threads}");
    let app = threads.lines().find(|l| l.starts_with("bash")).unwrap_or_else(|| panic!("{threads}"));
    assert_eq!(blocked(app) & alarm, 0, "the application's own mask is its own: {threads}");
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
}

/// The agent's long-lived descriptors (the code cache's directory) sit above the numbers an
/// application uses, so a traced program gets the descriptors it gets alone (its first open is
/// fd 3, as opensnoop shows on the kernel).
#[test]
fn the_agent_leaves_low_descriptors_to_the_application() {
    let shm = format!("bpftime-cli-fds-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "16M"]).status.success());
    let obj = build_example("uprobe_calls");
    let low = |out: &[u8]| -> Vec<String> { text(out).lines().filter(|l| l.parse::<u32>().is_ok_and(|fd| fd < 900)).map(String::from).collect() };
    let traced = bpftime_shm(&shm, &["start", "--program", obj.to_str().unwrap(), "--", "ls", "/proc/self/fd"]);
    assert!(traced.status.success(), "{}", text(&traced.stderr));
    let alone = Command::new("ls").arg("/proc/self/fd").output().unwrap();
    assert_eq!(low(&traced.stdout), low(&alone.stdout), "{}", text(&traced.stdout));
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
}

#[test]
fn start_with_a_program_loads_it_into_the_region() {
    let shm = format!("bpftime-cli-program-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create", "--size", "16M"]).status.success());
    let obj = build_example("uprobe_calls");
    let run = bpftime_shm(&shm, &["start", "--program", obj.to_str().unwrap(), "--", &calls_target(), "300"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let dump = bpftime_shm(&shm, &["map", "dump", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("JSON");
    assert_eq!(json_value(&stats, 0), 300);
    let progs = bpftime_shm(&shm, &["prog", "list"]);
    assert!(text(&progs.stdout).contains("`on_add`"), "{}", text(&progs.stdout));
    assert!(bpftime_shm(&shm, &["shm", "remove"]).status.success());
}

#[test]
fn start_reports_a_missing_agent_or_command_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_bpftime")).env("BPFTIME_AGENT", "/nonexistent/libbpftime.so").args(["start", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the agent /nonexistent/libbpftime.so (from BPFTIME_AGENT) does not exist"), "{}", text(&out.stderr));
    let out = bpftime(&["start", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/command"), "{}", text(&out.stderr));
    // A statically linked program runs as it would, with a word that no probe can reach it.
    let dir = std::env::temp_dir().join(format!("bpftime-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, exe) = (dir.join("three.c"), dir.join("three"));
    std::fs::write(&src, "int main(void) { return 3; }\n").unwrap();
    let built = Command::new("cc").arg("-static").arg("-o").arg(&exe).arg(&src).output().is_ok_and(|o| o.status.success());
    if built {
        let out = bpftime(&["start", "--", exe.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("is statically linked: LD_PRELOAD cannot load the agent"), "{}", text(&out.stderr));
        let out = bpftime(&["start", "--", "true"]);
        assert!(!text(&out.stderr).contains("statically linked"), "{}", text(&out.stderr));
    } else {
        println!("skipping the static case: cc -static failed (no libc.a)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `bpftime ARGS` as user `nobody` (setpriv), with BPFTIME_SHM=shm.
fn bpftime_as_nobody(kit: &std::path::Path, shm: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(kit.join("bpftime"))
        .args(args)
        .env("BPFTIME_SHM", shm)
        .output()
        .expect("run setpriv")
}

/// Copies of the CLI, the agent (with `libbpftime_early.so`) and `files` in a folder user `nobody` can reach (the build
/// folder may be under a private home).
fn nobody_kit(files: &[&std::path::Path]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("bpftime-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime"));
    for f in [cli, &cli.with_file_name("libbpftime.so"), &cli.with_file_name("libbpftime_early.so")].into_iter().chain(files.iter().copied()) {
        let to = dir.join(f.file_name().unwrap());
        std::fs::copy(f, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn a_region_made_by_another_user_is_refused_everywhere() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipping: needs root and setpriv to act as user nobody");
        return;
    }
    let kit = nobody_kit(&[&bpftime_tests::clang::build_target("victim", false), &build_example("overwrite")]);
    let victim = kit.join("victim");
    let victim = victim.to_str().unwrap();
    let obj = kit.join("overwrite.bpf.o");
    // The attack works where it is allowed: in the attacker's own region, run by the attacker.
    let shm = format!("bpftime-cli-foreign-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let made = bpftime_as_nobody(&kit, &shm, &["shm", "create", "--size", "8M"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let loaded = bpftime_as_nobody(&kit, &shm, &["load", obj.to_str().unwrap()]);
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    let own = bpftime_as_nobody(&kit, &shm, &["start", "--", victim]);
    assert_eq!(text(&own.stdout), "pwned\n", "{}", text(&own.stderr));
    // Root does not use it: not `start`, not a preloaded agent, not the inspection commands.
    let start = bpftime_shm(&shm, &["start", "--", victim]);
    assert_eq!(start.status.code(), Some(1));
    assert!(text(&start.stderr).contains("is owned by uid 65534, not by you (uid 0)"), "{}", text(&start.stderr));
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime.so");
    let preloaded = Command::new(victim).env("LD_PRELOAD", &agent).env("BPFTIME_SHM", &shm).output().unwrap();
    assert_eq!(text(&preloaded.stdout), "untouched\n", "the application runs on, untouched");
    assert!(text(&preloaded.stderr).contains("refusing shared memory region"), "{}", text(&preloaded.stderr));
    for args in [&["map", "list"][..], &["prog", "list"], &["shm", "info"], &["trace", "--no-follow"]] {
        let out = bpftime_shm(&shm, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains("refusing shared memory region"), "{args:?}: {}", text(&out.stderr));
    }
    // A symbolic link planted under the region's name is not followed.
    let link = format!("bpftime-cli-link-{}", std::process::id());
    std::os::unix::fs::symlink(format!("/dev/shm/{shm}"), format!("/dev/shm/{link}")).unwrap();
    let out = bpftime_shm(&link, &["map", "list"]);
    assert!(text(&out.stderr).contains("symbolic link"), "{}", text(&out.stderr));
    std::fs::remove_file(format!("/dev/shm/{link}")).unwrap();
    std::fs::remove_file(format!("/dev/shm/{shm}")).unwrap();
    // And the code cache nobody's loader filled beside it.
    let _ = std::fs::remove_dir_all(format!("/dev/shm/{shm}.code"));
    // The other way round: nobody cannot read or use root's region.
    let mine = format!("bpftime-cli-mine-{}", std::process::id());
    let _ = bpftime_shm(&mine, &["shm", "remove"]);
    assert!(bpftime_shm(&mine, &["shm", "create", "--size", "8M"]).status.success());
    let out = bpftime_as_nobody(&kit, &mine, &["map", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    assert!(bpftime_shm(&mine, &["shm", "remove"]).status.success());
    std::fs::remove_dir_all(&kit).unwrap();
}

#[test]
fn vm_ptx_and_the_gpu_engines() {
    let obj = build_example("gpu_maps");
    let obj = obj.to_str().unwrap();
    let mem = "07 00 00 00 00 00 00 00";
    let jit = bpftime(&["vm", "run", obj, "--mem", mem]);
    let ptx = bpftime(&["vm", "run", "--engine", "ptx", obj, "--mem", mem, "--dump-maps"]);
    assert!(ptx.status.success(), "{}", text(&ptx.stderr));
    let out = text(&ptx.stdout);
    assert!(out.starts_with(&text(&jit.stdout)), "same r0 as the JIT:\n{out}");
    // Copied back into the object's host maps, dumped as the CPU engines dump them.
    assert!(out.contains("map 1 `counts`: array") && out.contains("  15 => 10021702"), "{out}");
    assert!(out.contains("`per_cpu`: percpu_array") && out.contains("(sum 1)"), "per-SM values in CPU slots: {out}");
    assert!(out.contains("40 bytes waiting, producer at 40, consumer at 0, 0 lost"), "two ring records: {out}");
    // Many threads share the maps.
    let many = bpftime(&["vm", "run", "--engine", "ptx", "--threads", "32", obj, "--mem", mem, "--dump-maps"]);
    assert!(text(&many.stdout).contains("  0 => 224\n"), "32 threads x 7: {}", text(&many.stdout));
    assert!(text(&many.stderr).contains("32 x r0 = 0x2d58"), "{}", text(&many.stderr));
    // The PTX itself, for another target.
    let p = bpftime(&["vm", "ptx", obj, "--sm", "sm_90"]);
    assert!(text(&p.stdout).contains(".target sm_90") && text(&p.stdout).contains(".visible .entry bpftime_run("), "{}", text(&p.stdout));
    // bpf_get_prandom_u32 on the GPU: draws differ, fit in 32 bits and vary, on 64 threads.
    let random = build_example("gpu_random");
    let r = bpftime(&["vm", "run", "--engine", "ptx", "--threads", "64", "--section", "gpu/random", random.to_str().unwrap()]);
    assert!(text(&r.stderr).contains("64 x r0 = 0x1"), "{}{}", text(&r.stdout), text(&r.stderr));
    // The host's uid, gid and name, as the CPU's helpers give them.
    let who = |engine: &str| text(&bpftime(&["vm", "run", "--engine", engine, "--section", "gpu/identity", random.to_str().unwrap()]).stdout);
    assert!(who("interp").starts_with("r0 = ") && who("interp") != "r0 = 0x0 (0)\n", "{}", who("interp"));
    assert_eq!(who("ptx"), who("interp"));
    // A helper the GPU lacks is refused with the instruction.
    let cpu_only = build_example("read_str");
    let e = bpftime(&["vm", "ptx", cpu_only.to_str().unwrap()]);
    assert_eq!(e.status.code(), Some(1));
    assert!(text(&e.stderr).contains("is not available on the GPU"), "{}", text(&e.stderr));
    // The device: runs where there is one, says why not elsewhere.
    let gpu = bpftime(&["vm", "run", "--engine", "gpu", obj, "--mem", mem]);
    if gpu.status.success() {
        assert_eq!(gpu.stdout, jit.stdout);
    } else {
        assert!(text(&gpu.stderr).contains("no NVIDIA driver") || text(&gpu.stderr).contains("CUDA"), "{}", text(&gpu.stderr));
    }
}

#[test]
fn endless_and_blocking_inputs_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("bpftime-cli-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("prog.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let start = std::time::Instant::now();
    for args in [vec!["vm", "run", "/dev/zero"], vec!["run", "/dev/zero", "--", "true"], vec!["vm", "run", fifo.to_str().unwrap()], vec!["load", "/dev/zero"]] {
        let out = bpftime(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains("not a regular file"), "{args:?}: {}", text(&out.stderr));
    }
    // The agent: the application runs on, without probes, and is not blocked by the FIFO.
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime.so");
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let out =
            Command::new(calls_target()).arg("3").env("LD_PRELOAD", &agent).env("BPFTIME_PROGRAM", path).env("BPFTIME_SHM", "bpftime-none").output().unwrap();
        assert!(out.status.success());
        assert_eq!(text(&out.stdout), "sum 9 fact 3628800 tiny 0\n");
        assert!(text(&out.stderr).contains("not a regular file"), "{}", text(&out.stderr));
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "refusals are immediate: {:?}", start.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bpftime prog run` (bpftime's `run-on-cuda`): a program of the region runs as a kernel of
/// its own over one- and two-dimensional launches, reading global data the region holds and
/// leaving its writes in the region's map; the device where there is one, the PTX interpreter
/// always.
#[test]
fn region_programs_run_as_gpu_kernels_of_their_own() {
    let obj = build_example("gpu_direct");
    let mut engines = vec!["ptx"];
    if bpftime(&["vm", "run", "--engine", "gpu", obj.to_str().unwrap(), "--section", "fill"]).status.success() {
        engines.push("gpu");
    }
    for engine in engines {
        let shm = format!("bpftime-cli-direct-{engine}-{}", std::process::id());
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
        assert!(bpftime_shm(&shm, &["shm", "create", "--size", "64M"]).status.success());
        let load = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
        assert!(load.status.success(), "{}", text(&load.stderr));
        let run = bpftime_shm(&shm, &["prog", "run", "fill", "--engine", engine, "--grid", "4", "--block", "64"]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        assert!(text(&run.stdout).contains("256 threads on") && text(&run.stdout).contains("256 x r0 = 0x0"), "{}", text(&run.stdout));
        let run = bpftime_shm(&shm, &["prog", "run", "fill_2d", "--engine", engine, "--grid", "2,2", "--block", "4,4"]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        let dump = text(&bpftime_shm(&shm, &["map", "dump", "out"]).stdout);
        // The 2-D run wrote 1000 * y + x for the 8 x 8 threads; the 1-D run's i * 3 stays past them.
        for (k, v) in [(1, 1), (8, 1000), (9, 1001), (63, 7007), (64, 192), (255, 765)] {
            assert!(dump.contains(&format!("\n  {k} => {v}\n")), "out[{k}] = {v} on {engine}:\n{dump}");
        }
        assert!(!dump.contains("\n  256 =>"), "no thread past the launch: {dump}");
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
    }
}

/// The message part of the trace lines in `stderr`.
fn printk_messages(stderr: &[u8]) -> Vec<String> {
    text(stderr).lines().filter_map(|l| l.split_once(": bpf_trace_printk: ").map(|(_, m)| m.to_string())).collect()
}

/// `bpf_trace_printk` on the GPU (the PTX on the PTX interpreter, and the device where there is
/// one) prints what the CPU engines print, `%s` of global data included; bpftime's puts (501)
/// prints its string as it is.
#[test]
fn gpu_printk_prints_what_the_cpu_prints() {
    let obj = build_example("gpu_printk");
    let obj = obj.to_str().unwrap();
    let mem = "2a 00 00 00 00 00 00 00";
    let cpu = bpftime(&["vm", "run", "--engine", "interp", obj, "--section", "printk", "--mem", mem]);
    assert!(cpu.status.success(), "{}", text(&cpu.stderr));
    let expected = printk_messages(&cpu.stderr);
    assert_eq!(expected, ["-5 7 ff", "-1099511627776 2a |   42|", "|42  | ok", "name gpu-printk"], "{}", text(&cpu.stderr));
    let ptx = bpftime(&["vm", "run", "--engine", "ptx", "--threads", "3", obj, "--section", "printk", "--mem", mem]);
    assert!(ptx.status.success(), "{}", text(&ptx.stderr));
    // Threads interleave (as on a GPU): each prints every line, and a line's first print comes
    // after the one before it (every thread prints them in order).
    let lines = printk_messages(&ptx.stderr);
    let mut firsts: Vec<&String> = vec![];
    for l in &lines {
        if !firsts.contains(&l) {
            firsts.push(l);
        }
    }
    assert_eq!(firsts, expected.iter().collect::<Vec<_>>(), "lines in order\n{}", text(&ptx.stderr));
    assert!(expected.iter().all(|e| lines.iter().filter(|l| *l == e).count() == 3), "every thread's lines\n{}", text(&ptx.stderr));
    let puts = bpftime(&["vm", "run", "--engine", "ptx", obj, "--section", "puts"]);
    assert_eq!(printk_messages(&puts.stderr), ["plain string, no format: %d"], "{}", text(&puts.stderr));
    let gpu = bpftime(&["vm", "run", "--engine", "gpu", obj, "--section", "printk", "--mem", mem]);
    if gpu.status.success() {
        assert_eq!(printk_messages(&gpu.stderr), expected, "{}", text(&gpu.stderr));
    }
}

#[test]
fn bpftime_gpu_map_types_load_on_both_sides() {
    let obj = build_example("gpu_map_types");
    let obj = obj.to_str().unwrap();
    let cpu = bpftime(&["vm", "run", obj, "--dump-maps"]);
    assert!(cpu.status.success(), "{}", text(&cpu.stderr));
    let gpu = bpftime(&["vm", "run", "--engine", "ptx", obj, "--dump-maps"]);
    assert!(gpu.status.success(), "{}", text(&gpu.stderr));
    // The GPU's maps are copied back into the same host maps: the same dump.
    assert_eq!(text(&gpu.stdout), text(&cpu.stdout));
    assert!(text(&cpu.stdout).contains("`gpu_array`: array") && text(&cpu.stdout).contains("  1 => 5\n"), "{}", text(&cpu.stdout));
}

/// Compiles `examples/cuda/NAME.cu` with nvcc (the pip wheel's) into an object with `flags`.
#[test]
fn relocatable_units_are_patched_as_units_the_device_linker_accepts() {
    use bpftime_tests::cuda_tools::tool_or_skip;
    let Some(nvcc) = tool_or_skip("nvcc", "relocatable device code") else { return };
    let Some(ptxas) = tool_or_skip("ptxas", "relocatable device code") else { return };
    let Some(nvlink) = tool_or_skip("nvlink", "relocatable device code") else { return };
    let dir = std::env::temp_dir().join(format!("bpftime-rdc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = bpftime_tests::repo_root().join("examples/cuda");
    let app = dir.join("linked");
    let bin = nvcc.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new(&nvcc)
        .arg("-rdc=true")
        .args(["linked_a.cu", "linked_b.cu", "linked_main.cu"].map(|f| src.join(f)))
        .arg("-o")
        .arg(&app)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(o.status.success(), "nvcc: {}", text(&o.stderr));
    // The units, and the device-linked machine code whose kernels they define.
    let s = text(&bpftime(&["cuda", "inspect", app.to_str().unwrap()]).stdout);
    // linked_a.cu's and linked_b.cu's, linked_main.cu's empty one, and the device runtime's
    // (linked_b.cu's `parent` launches a kernel).
    assert_eq!(s.matches(", a unit of relocatable device code)").count(), 4, "{s}");
    for k in ["_Z4fillPi (fill(int*))", "_Z5scalePii (scale(int*, int))", "_Z5shiftILi5EEvPi (void shift<5>(int*))"] {
        assert!(s.contains(&format!("kernel {k}: device-linked SASS: instrumented through its unit's PTX")), "{k}: {s}");
    }
    assert!(!s.contains("runs untouched"), "{s}");
    assert!(s.contains("kernel _Z6parentPi (parent(int*)), params [8] bytes: can be instrumented"), "{s}");
    // Patched as units (the arena `.weak`, so the units share one), each compiled as a unit and
    // the set linked by nvlink, as the driver's linker links them at load.
    let obj = build_example("cuda_linked");
    let out_dir = dir.join("patched");
    let out = bpftime(&["cuda", "patch", obj.to_str().unwrap(), app.to_str().unwrap(), "-o", out_dir.to_str().unwrap()]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(report.contains("probe `on_scale` at the entry of _Z5scalePii") && report.contains("probe `after_fill` at the returns of _Z4fillPi"), "{report}");
    assert_eq!(report.matches("probe `on_shift` at the entry of _Z5shiftILi5EEvPi").count(), 2, "in both units that define it: {report}");
    let mut units: Vec<std::path::PathBuf> =
        std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".unit.ptx")).collect();
    units.sort();
    assert_eq!(units.len(), 4, "{report}");
    // The application's units (the device runtime's PTX is for a newer GPU; nvlink takes the
    // runtime from libcudadevrt.a as nvcc's link does).
    units.retain(|u| std::fs::read_to_string(u).unwrap().contains(".target sm_75"));
    assert_eq!(units.len(), 3, "{report}");
    let mut cubins = vec![];
    for u in &units {
        let ptx = std::fs::read_to_string(u).unwrap();
        if ptx.contains("bpftime_arena") {
            assert!(ptx.contains(".weak .global .align 8 .u64 bpftime_arena"), "{ptx}");
        }
        let cubin = u.with_extension("cubin");
        let o = Command::new(&ptxas).args(["-arch=sm_90", "-c"]).arg(u).arg("-o").arg(&cubin).output().unwrap();
        assert!(o.status.success(), "ptxas -c {}: {}", u.display(), text(&o.stderr));
        cubins.push(cubin);
    }
    let linked = dir.join("linked.cubin");
    // linked_b.cu's `parent` launches a kernel: the device runtime library is linked in too.
    let lib = nvcc.parent().and_then(|b| b.parent()).map(|t| t.join("lib")).unwrap_or_default();
    let o = Command::new(&nvlink).arg("-arch=sm_90").args(&cubins).arg("-L").arg(&lib).arg("-lcudadevrt").arg("-o").arg(&linked).output().unwrap();
    assert!(o.status.success(), "nvlink: {}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

fn nvcc_object(name: &str, flags: &[&str], tag: &str) -> Option<std::path::PathBuf> {
    let nvcc = match bpftime_tests::cuda_tools::tool("nvcc") {
        Some(n) => n,
        None if std::env::var_os("BPFTIME_REQUIRE_CUDA_TOOLS").is_some() => panic!("nvcc not found (bash scripts/setup.sh installs it)"),
        None => {
            println!("skipping: nvcc not found");
            return None;
        }
    };
    let dir = bpftime_tests::repo_root().join("target/cuda-examples");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}-{tag}.o"));
    // Tests running at once build the same object: each writes a file of its own and renames
    // it into place, so none reads another's half-written one.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!("{name}-{tag}.o.{}.{n}", std::process::id()));
    let src = bpftime_tests::repo_root().join(format!("examples/cuda/{name}.cu"));
    // nvcc finds its own tools (cudafe++, ptxas, fatbinary) beside it.
    let bin = nvcc.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new(&nvcc).args(flags).arg("-c").arg(&src).arg("-o").arg(&partial).env("PATH", path).output().unwrap();
    assert!(o.status.success(), "nvcc failed: {}", text(&o.stderr));
    std::fs::rename(&partial, &out).unwrap();
    Some(out)
}

#[test]
fn cuda_inspect_reads_nvcc_output() {
    // The default build: sm_75 SASS and compute_75 PTX, zstd-compressed.
    let Some(default) = nvcc_object("vector_add", &[], "default") else { return };
    let out = bpftime(&["cuda", "inspect", default.to_str().unwrap()]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("ptx sm_75") && s.contains("compression zstd"), "{s}");
    assert!(
        s.contains("kernel _Z10vector_addPKfS0_Pfi (vector_add(float const*, float const*, float*, int)), params [8, 8, 8, 4] bytes: can be instrumented"),
        "{s}"
    );
    // A relocatable build: a template's kernel is `.weak` in its PTX, a device function of its
    // own is a function of the SASS (not a kernel), and each kernel is listed once.
    let rdc = nvcc_object("relocatable", &["-rdc=true"], "rdc").unwrap();
    let s = text(&bpftime(&["cuda", "inspect", rdc.to_str().unwrap()]).stdout);
    assert!(s.contains("kernel _Z6powersILi1EEvPi (void powers<1>(int*)), params [8] bytes: can be instrumented"), "{s}");
    assert!(!s.contains("cubed"), "a device function is no kernel: {s}");
    assert_eq!(s.matches("kernel _Z6powersILi1EEvPi").count(), 1, "{s}");
    let shapes = nvcc_object("kernel_shapes", &[], "default").unwrap();
    let s = text(&bpftime(&["cuda", "inspect", shapes.to_str().unwrap()]).stdout);
    assert!(s.contains("params [1, 1, 2, 4, 2, 8, 8] bytes"), "small parameters and structs by value: {s}");
    // Uncompressed, and JSON.
    let plain = nvcc_object("vector_add", &["--no-compress"], "plain").unwrap();
    let j: serde_json::Value = serde_json::from_slice(&bpftime(&["cuda", "inspect", "--json", plain.to_str().unwrap()]).stdout).unwrap();
    let entries = j["fatbins"][0]["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "ptx" && e["compression"] == "none"), "{j}");
    assert_eq!(j["fatbins"][0]["kernels"][0]["instrumentable"], true);
    // SASS only: said so, and it runs untouched.
    let sass = nvcc_object("vector_add", &["-gencode", "arch=compute_75,code=sm_75"], "sass").unwrap();
    let s = text(&bpftime(&["cuda", "inspect", sass.to_str().unwrap()]).stdout);
    assert!(s.contains("SASS only, runs untouched") && !s.contains("can be instrumented"), "{s}");
    // Not a CUDA binary.
    let none = bpftime(&["cuda", "inspect", env!("CARGO_BIN_EXE_bpftime")]);
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none.stderr).contains("no CUDA fatbin"), "{}", text(&none.stderr));
}

#[test]
fn cuda_patch_splices_probes_that_ptxas_accepts() {
    let Some(app) = nvcc_object("vector_add", &[], "default") else { return };
    let probes = build_example("cuda_probes");
    let dir = bpftime_tests::repo_root().join("target/cuda-patch-test");
    let _ = std::fs::remove_dir_all(&dir);
    let out = bpftime(&["cuda", "patch", probes.to_str().unwrap(), app.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("probe `on_entry` at the entry of _Z10vector_addPKfS0_Pfi"), "{s}");
    assert!(s.contains("probe `on_exit` at the returns of _Z10vector_addPKfS0_Pfi"), "by the bare name: {s}");
    let patched: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(patched.len(), 1);
    let ptx = std::fs::read_to_string(&patched[0]).unwrap();
    assert!(ptx.contains(".visible .global .align 8 .u64 bpftime_arena[8];") && ptx.contains("call.uni (%bpt6), bpftime_p0_f0"), "spliced");
    // The kernel's own code is all still there.
    for l in ["add.f32", "st.global.f32", "ld.param.u32"] {
        assert!(ptx.contains(l), "{l} kept");
    }
    let Some(ptxas) = bpftime_tests::cuda_tools::ptxas_or_skip("the patched module") else { return };
    let o = Command::new(&ptxas).args(["-v", "-arch=sm_75"]).arg(&patched[0]).arg("-o").arg(dir.join("p.cubin")).output().unwrap();
    assert!(o.status.success(), "ptxas refused the patched module: {}", text(&o.stderr));
    println!("patched vector_add: {}", text(&o.stderr).lines().find(|l| l.contains("registers")).unwrap_or(""));
    // A binary without PTX cannot be instrumented, and says so.
    let sass = nvcc_object("vector_add", &["-gencode", "arch=compute_75,code=sm_75"], "sass").unwrap();
    let out = bpftime(&["cuda", "patch", probes.to_str().unwrap(), sass.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no PTX in its fatbins: its kernels run untouched"), "{}", text(&out.stderr));
}

/// What libbpf tools set at load time: where a bare `SEC("uprobe")` program attaches
/// (`--attach`), a `const volatile` setting (`--set`) and a map's size (`--map-size`).
#[test]
fn run_attach_set_and_map_size_configure_an_object() {
    let obj = build_example("configurable");
    let calls = bpftime_tests::clang::build_target("calls", false);
    let target = format!("on_add={}:add", calls.display());
    let args = ["run", "--attach", &target, "--set", "min_arg=100", "--map-size", "seen=1000", obj.to_str().unwrap(), "--", calls.to_str().unwrap(), "500"];
    let out = bpftime(&args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("`hits`") && stderr.contains("  0 => 400\n"), "add() calls with a >= 100 of 500: {stderr}");
    assert!(stderr.contains("max_entries 1000") && stderr.contains("(400 entries)"), "every such argument kept: {stderr}");
    // Without --attach it says how to attach it; a bad setting is a clear error.
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", "true"]);
    assert!(text(&out.stderr).contains("bpftime run --attach PROG=BINARY:FUNCTION"), "{}", text(&out.stderr));
    let out = bpftime(&["run", "--set", "nope=1", "--attach", &target, obj.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--set nope=1: global `nope`: no such global variable"), "{}", text(&out.stderr));
}

/// Fork while another thread is inside probes: every child (forked 100 times) finishes, keeps
/// the probes, and its add() call is counted with the parent's (the maps are shared memory);
/// then 100 runs of a smaller storm.
#[test]
fn forked_children_keep_their_probes_and_never_hang() {
    let obj = build_example("uprobe_forks");
    let forks = bpftime_tests::clang::build_target("forks", false);
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", forks.to_str().unwrap(), "20000", "100"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("0 of 100 children failed"), "{stdout}");
    // The parent's thread's 20000 calls and one per child.
    assert!(stderr.contains("`calls`") && stderr.contains("  0 => 20100\n"), "{stderr}");
    assert!(stderr.contains("(sum 20100)"), "the per-CPU count too: {stderr}");
    // A storm in a loop: 100 runs of 10 forks each while the thread is inside probes; none
    // hangs (the target exits 1 when a child does not finish in time) or loses a count.
    for run in 0..100 {
        let out = bpftime(&["run", obj.to_str().unwrap(), "--", forks.to_str().unwrap(), "2000", "10"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success() && stdout.contains("0 of 10 children failed"), "run {run}: {stdout}{stderr}");
        assert!(stderr.contains("  0 => 2010\n"), "run {run}: {stderr}");
    }
}

/// exec drops the old image's probes (another thread is inside them when it happens) and the
/// new image, preloaded again through the inherited environment, is attached afresh: three
/// execs, four images, every main-thread call seen at entry and return.
#[test]
fn exec_attaches_the_new_image_afresh() {
    let obj = build_example("uprobe_signals");
    let execs = bpftime_tests::clang::build_target("execs", false);
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", execs.to_str().unwrap(), "1000", "3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "sum 500500", "the last image's own calls");
    // add(i, 1) for i < 1000 in each of 4 images; the other thread adds add(0, 0) calls.
    let sum = 4 * 500500;
    assert!(stderr.contains(&format!("  1 => {sum}\n")) && stderr.contains(&format!("  3 => {sum}\n")), "arguments and results: {stderr}");
    // execve's tracepoints: entered 4 times, the exec that started the first image included
    // (made by bpftime, which has no agent: its entry runs first thing in the new image); its
    // exit runs in each new image, as the kernel's sys_exit_execve does.
    let obj = build_example("exec_events");
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", execs.to_str().unwrap(), "10", "3"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("  0 => 4\n  1 => 4\n"), "execve entries and exits: {stderr}");
}

/// `SEC("usdt/BINARY:PROVIDER:NAME")` programs written with libbpf's usdt.bpf.h run under
/// `bpftime run` with no loader of their own: bpftime reads the probes' notes and fills the
/// spec maps as libbpf would. The usdt target's tick probe (no semaphore check) and guarded
/// probe (fires only while its semaphore is raised, which attaching does), then a USDT probe
/// in a library loaded later with dlopen (placed with --attach).
#[test]
fn usdt_programs_run_under_bpftime_run() {
    let obj = build_example("usdt_args");
    let usdt = bpftime_tests::clang::build_target("usdt", false);
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", usdt.to_str().unwrap(), "1000"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "1000 ticks, sum 499500");
    let (n, sum) = (1000, 499500);
    for (k, v) in [(0, n), (1, sum), (2, 2 * sum), (3, n), (4, 3 * sum), (5, n)] {
        assert!(stderr.contains(&format!("  {k} => {v}\n")), "usdt_stats[{k}] = {v}: {stderr}");
    }
    let obj = build_example("usdt_plugin");
    let lib = bpftime_tests::clang::build_target("plugin", true);
    let host = bpftime_tests::clang::build_target("dlopen_host", false);
    let place = format!("on_mul={}:plugin:mul", lib.display());
    let out = bpftime(&["run", "--attach", &place, obj.to_str().unwrap(), "--", host.to_str().unwrap(), lib.to_str().unwrap(), "500"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    // (The library's constructor calls plugin_mul(0, 0) once, in dlopen.)
    for (k, v) in [(0, 501), (1, 499 * 500 / 2), (2, 1500)] {
        assert!(stderr.contains(&format!("  {k} => {v}\n")), "mul_stats[{k}] = {v}: {stderr}");
    }
}

/// A library unloaded with dlclose and loaded again keeps its probes, as the kernel's, which
/// are on the file, fire in every mapping of it: a uprobe and a USDT probe in it count the
/// calls of all three loads under `bpftime run` (the second load used to run unprobed: the
/// probes stayed with the first). An agent loaded into the running process with `bpftime
/// attach` (where the application's dlopen and dlclose are libc's, not the agent's) attaches
/// the probe when the library is loaded after it, and again at each later load.
#[test]
fn probes_follow_a_library_unloaded_and_loaded_again() {
    use std::io::{BufRead, BufReader};
    let lib = bpftime_tests::clang::build_target("plugin", true);
    let host = bpftime_tests::clang::build_target("dlopen_host", false);
    let (lib, host) = (lib.to_str().unwrap(), host.to_str().unwrap());
    // sum of i for i < 500, three times; plugin_mul(i, 3) summed.
    let (sum_a, product) = (3 * 124_750, 3 * 3 * 124_750);
    let uprobe = build_example("uprobe_plugin");
    let out = bpftime(&["run", uprobe.to_str().unwrap(), "--", host, lib, "500", "3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("sum {product}"));
    // Each load's constructor calls plugin_mul(0, 0) in dlopen, before it returns.
    assert!(stderr.contains(&format!("  0 => 1503\n  1 => {sum_a}\n")), "uprobe calls and first arguments over three loads: {stderr}");
    let usdt = build_example("usdt_plugin");
    let place = format!("on_mul={lib}:plugin:mul");
    let out = bpftime(&["run", "--attach", &place, usdt.to_str().unwrap(), "--", host, lib, "500", "3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("  0 => 1503\n  1 => {sum_a}\n  2 => 4500\n")), "USDT hits over three loads: {stderr}");

    let shm = format!("bpftime-reloaded-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    let mut target = Command::new(host).args([lib, "200", "4", "step"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = target.id().to_string();
    let mut input = target.stdin.take().unwrap();
    let mut output = BufReader::new(target.stdout.take().unwrap()).lines();
    let mut ready = || assert_eq!(output.next().unwrap().unwrap(), "ready");
    // Round 0 unprobed, its library unloaded when the agent comes.
    ready();
    writeln!(input).unwrap();
    ready();
    let out = bpftime_shm(&shm, &["attach", &pid, "--program", uprobe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`on_mul` on libplugin.so:plugin_mul: Waiting"), "{}", text(&out.stderr));
    for _ in 1..=2 {
        writeln!(input).unwrap();
        ready();
    }
    let dump = bpftime_shm(&shm, &["map", "dump", "mul_stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap_or_else(|_| panic!("{}", text(&dump.stdout)));
    let at = |k: u64| v["entries"].as_array().unwrap().iter().find(|e| e["key"]["u64"] == k).map_or(0, |e| e["value"]["u64"].as_u64().unwrap());
    assert_eq!((at(0), at(1)), (402, 2 * 19_900), "calls and first arguments of rounds 1 and 2 (and their constructors'), each in a load of its own");
    writeln!(input).unwrap();
    assert_eq!(output.next().unwrap().unwrap(), format!("sum {}", 4 * 3 * 19_900));
    assert!(target.wait().unwrap().success());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// A library that glibc loads itself, not through the exported dlopen (an iconv module here;
/// NSS modules are loaded the same way), gets its probes as the kernel gives them: iconv(1)
/// converting one line to ISO-8859-2 calls the module's `gconv` twice (the text, then the
/// flush), and its `gconv_init` once. They used to wait forever.
#[test]
fn probes_attach_in_libraries_that_glibc_loads_itself() {
    let module = "/usr/lib/x86_64-linux-gnu/gconv/ISO8859-2.so";
    if !std::path::Path::new(module).exists() {
        eprintln!("skipped: no {module} (Debian's libc6 gconv modules)");
        return;
    }
    let input = std::env::temp_dir().join(format!("bpftime-iconv-{}.txt", std::process::id()));
    std::fs::write(&input, "h\u{e9}llo\n").unwrap();
    let uprobe = build_example("uprobe_plugin");
    let place = format!("on_mul={module}:gconv");
    let out = bpftime(&["run", "--attach", &place, uprobe.to_str().unwrap(), "--", "iconv", "-f", "UTF-8", "-t", "ISO-8859-2", input.to_str().unwrap()]);
    let _ = std::fs::remove_file(&input);
    let (stdout, stderr) = (&out.stdout, text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, b"h\xe9llo\n", "the converted text");
    assert!(stderr.contains("  0 => 2\n"), "two calls of gconv: {stderr}");
}

/// A signal handler that leaves by siglongjmp (a timeout) while the thread runs a probe's
/// handlers used to abandon them for good, with whatever they held: the next hits found the
/// agent's allocator locked and the process hung, at once. Signals that land in our work now
/// wait for it to end (as the kernel's wait for its eBPF programs), then run. Every call the
/// loop made is seen at its entry but those a jump cut short before their probe ran (a jump
/// lands at most once in each call), and every return but those of calls a jump left. Then
/// the same timeout on a blocking read that interception makes for the application.
#[test]
fn handlers_that_siglongjmp_out_of_probes_leave_nothing_behind() {
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("timeouts", false);
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", env!("CARGO_BIN_EXE_bpftime"), "run", obj.to_str().unwrap(), "--", target.to_str().unwrap(), "1000000"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "hung or failed: {:?}\n{stdout}{stderr}", out.status);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let (calls, jumps): (u64, u64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert!(jumps > 10, "the timer fired while the loop ran: {stdout}");
    let stat = |k: u64| -> u64 {
        let line = stderr.lines().find(|l| l.trim_start().starts_with(&format!("{k} => "))).unwrap_or_else(|| panic!("no key {k}: {stderr}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (entries, returns) = (stat(0), stat(2));
    assert!(entries <= calls && entries + jumps >= calls, "entries {entries}, calls {calls}, jumps {jumps}");
    assert!(returns <= entries && returns + jumps >= entries, "returns {returns}, entries {entries}, jumps {jumps}");

    // A timeout on a blocking call: each of 200 reads of an empty pipe is left by the timer's
    // siglongjmp while interception makes it. Each used to leave our work around the call
    // behind, a nesting level lost with it: after four, every system call of the thread was a
    // miss. The kernel sees all 200 reads and 200 setitimer calls enter, and the dynamic
    // loader's read of libc's ELF header (the target needs libc alone); so do we.
    let obj = build_example("read_timeouts");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", env!("CARGO_BIN_EXE_bpftime"), "run", obj.to_str().unwrap(), "--", target.to_str().unwrap(), "200", "read"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status);
    assert_eq!(stdout.trim(), "calls 200 jumps 200");
    assert!(stderr.contains("  0 => 201\n  1 => 200\n"), "reads and setitimer calls entered: {stderr}");
}

/// A blocking read that a signal handler installed with SA_RESTART interrupts 5 times (a child
/// sends the signals while the read waits): the kernel restarts it after each handler, and its
/// tracepoints show each restart, an exit with -ERESTARTSYS (-512) and an entry again (6
/// entries, 5 such exits and the last one's 1; bpftrace on the kernel shows the same 5), after
/// the dynamic loader's read of libc's ELF header (one entry and one exit more). The kernel
/// used to restart our own call for the application inside it: one entry, one exit.
#[test]
fn reads_restarted_after_a_signal_handler_show_each_restart_as_the_kernel_does() {
    let obj = build_example("read_restarts");
    let target = bpftime_tests::clang::build_target("restarts", false);
    for engine in ["jit", "interp"] {
        let out = bpftime(&["run", "--engine", engine, obj.to_str().unwrap(), "--", target.to_str().unwrap(), "5"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{engine}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), "read 1 handled 5", "{engine}");
        assert!(stderr.contains("  0 => 7\n  1 => 5\n  2 => 2\n"), "{engine}: entries, restarts, the other exits: {stderr}");
    }
}

/// `bpftime attach` into a process whose interval timer fires every 500 us, with a handler
/// that leaves by siglongjmp: the application's signals that land while the agent is being
/// loaded in it are held, and sent again once we are gone. Delivered inside our call, the
/// handler's jump left the call for good: the attach never ended (the process ran on without
/// the agent, and the attach failed once it exited). The process runs on and ends normally.
/// And its probes keep counting: the handler's jumps leave hits' handlers too (an agent loaded
/// this way wraps no handler, so nothing defers the signal), which left the thread's flow busy
/// for good, every later hit taken for a call of the handlers' own (2 entries of 2,000,000
/// calls were counted). As on the kernel, every call is seen at its entry but those a jump cut
/// short before their probe ran, and every return but those of calls a jump left.
#[test]
fn attach_holds_the_applications_signals_while_it_loads_the_agent() {
    use std::io::Read;
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("timeouts", false);
    let shm = format!("bpftime-attach-timer-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    let mut app = Command::new(&target).args(["2000000", "wait"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    bpftime_tests::wait_reading_stdin(app.id());
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60", env!("CARGO_BIN_EXE_bpftime"), "--shm", &shm, "attach", &app.id().to_string(), "--program", obj.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success() && stderr.contains(": Attached"), "{:?} {stderr}", out.status);
    app.stdin.take().unwrap().write_all(b"x").unwrap();
    let status = app.wait().unwrap();
    let mut said = String::new();
    app.stdout.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(status.success() && said.starts_with("calls 2000000 jumps "), "{status:?} {said}");
    let jumps: u64 = said.split_whitespace().nth(3).unwrap().parse().unwrap();
    let at = signal_stats(&shm);
    let (calls, entries, returns) = (2_000_000, at(0), at(2));
    // Misses counted by the programs, for a failure's message.
    let misses = text(&bpftime_shm(&shm, &["prog", "list"]).stdout);
    assert!(entries <= calls && entries + jumps >= calls, "entries {entries}, calls {calls}, jumps {jumps}; {misses}");
    assert!(returns <= entries && returns + jumps >= entries, "returns {returns}, entries {entries}, jumps {jumps}; {misses}");
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// `bpftime attach PID` loads the agent into a process started without it (blocked in a read
/// while another thread calls the probed function), the probes count exactly while attached,
/// `bpftime detach PID` removes them, and the process runs on with its own code and exits 0.
#[test]
fn attach_to_a_running_process_and_detach() {
    use std::io::{BufRead, BufReader};
    let obj = build_example("uprobe_signals");
    let shm = format!("bpftime-attach-test-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    let mut target = Command::new(bpftime_tests::clang::build_target("attachable", false)).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = target.id().to_string();
    let mut input = target.stdin.take().unwrap();
    let mut output = BufReader::new(target.stdout.take().unwrap()).lines();
    assert_eq!(output.next().unwrap().unwrap(), "ready");
    let mut run = |n: u64| {
        writeln!(input, "run {n}").unwrap();
        output.next().unwrap().unwrap()
    };
    assert_eq!(run(100), "done 5050", "before attaching");
    let out = bpftime_shm(&shm, &["attach", &pid, "--program", obj.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`on_add` on /proc/self/exe:add: Attached"), "{}", text(&out.stderr));
    let sums = || {
        let at = signal_stats(&shm);
        (at(1), at(3))
    };
    assert_eq!(sums(), (0, 0), "the other thread's add(0, 0) calls add nothing");
    assert_eq!(run(1000), "done 500500");
    assert_eq!(sums(), (500500, 500500), "arguments and results of the calls while attached");
    let out = bpftime_shm(&shm, &["detach", &pid]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run(500), "done 125250");
    assert_eq!(sums(), (500500, 500500), "nothing counted after detach");
    drop(input);
    assert!(target.wait().unwrap().success());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// Probes attached while the process runs, both ways (links followed by a preloaded agent, and
/// `bpftime attach PID`), into a process whose threads block every signal (one with
/// pthread_sigmask, one with sigprocmask, or both from the mask the process was started with)
/// while one of them calls the probed function without pause: a thread that meets the `int3` of a jump being written with SIGTRAP blocked would be
/// killed by the kernel (it was, in every run); the kernel's uprobes do not care about masks.
/// Every run counts each call made after the attach, and the process exits cleanly.
#[test]
fn probes_attach_while_threads_block_every_signal() {
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("attachable", false);
    let sums = |shm: &str| {
        let at = signal_stats(shm);
        (at(1), at(3))
    };
    // (Injected; every signal blocked from the start, the mask inherited across execve.)
    let rounds = [(false, false), (true, false), (false, true)];
    for (round, (injected, inherited)) in rounds.into_iter().cycle().take(6).enumerate() {
        let shm = format!("bpftime-masked-{}-{round}", std::process::id());
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
        let mut child = if injected {
            Command::new(&target).arg("masked").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap()
        } else {
            assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
            let mut cmd = start_piped(&shm, &target, &[]);
            if inherited {
                use std::os::unix::process::CommandExt;
                // SAFETY: the closure only fills a signal set and sets the mask
                // (async-signal-safe calls) between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        let mut all: libc::sigset_t = std::mem::zeroed();
                        libc::sigfillset(&mut all);
                        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
                        Ok(())
                    });
                }
            } else {
                cmd.arg("masked");
            }
            cmd.spawn().unwrap()
        };
        let (mut input, mut line) = attachable_io(&mut child);
        if injected {
            let out = bpftime_shm(&shm, &["attach", &child.id().to_string(), "--program", obj.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        } else {
            let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let attached = wait_attached(&shm);
            assert!(attached, "{}", text(&bpftime_shm(&shm, &["link", "list"]).stdout));
        }
        writeln!(input, "run 1000").unwrap();
        let done = line();
        drop(input);
        let status = child.wait().unwrap();
        assert_eq!(done, "done 500500", "round {round} (injected: {injected}): {status}");
        assert!(status.success(), "round {round} (injected: {injected}): {status}");
        assert_eq!(sums(&shm), (500500, 500500), "round {round}: every call after the attach");
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
    }
}

/// `bpftime attach`, then a thread that blocks every signal through libc's pthread_sigmask
/// (the agent came after the application bound its calls, so its wrappers are not in their
/// way: libc's functions are hooked instead), then probes on the function that thread calls
/// without pause: without the hooks the process was killed by the trap of the jump being
/// written, in every run. The thread's mask is what it asked for but for SIGTRAP (the hook's
/// first hit on a thread, which defers signals, restores the mask the call set), every call
/// after the attach is counted, and the process exits cleanly.
#[test]
fn an_injected_agent_keeps_traps_open_in_threads_that_block_signals_later() {
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("attachable", false);
    for round in 0..3 {
        let shm = format!("bpftime-late-mask-{}-{round}", std::process::id());
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
        assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
        let mut child = Command::new(&target).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let (mut input, mut line) = attachable_io(&mut child);
        let out = bpftime_shm(&shm, &["attach", &child.id().to_string()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        writeln!(input, "block").unwrap();
        assert_eq!(line(), "blocked");
        // The other thread's mask is what it asked for (every signal blocked: SIGUSR1 too),
        // but for SIGTRAP.
        let pid = child.id();
        let blocked: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&tid| tid != pid && std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.trim() == "attachable"))
            .filter_map(|tid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
                u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?.trim(), 16).ok()
            })
            .collect();
        let bit = |sig: i32| 1u64 << (sig - 1);
        assert!(blocked.len() == 1 && blocked[0] & bit(libc::SIGUSR1) != 0 && blocked[0] & bit(libc::SIGTRAP) == 0, "round {round}: masks {blocked:x?}");
        let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let attached = wait_attached(&shm);
        writeln!(input, "run 1000").unwrap();
        let done = line();
        drop(input);
        let status = child.wait().unwrap();
        assert!(attached && done == "done 500500" && status.success(), "round {round}: {done:?}, {status}");
        let at = signal_stats(&shm);
        assert_eq!((at(1), at(3)), (500500, 500500), "round {round}: every call after the attach");
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
    }
}

/// The audit library `bpftime start` loads into every process keeps its code in `.text`, as
/// debuggers and symbolisers expect: gdb attaching to a process under bpftime stopped with an
/// internal error ("sect_index_text not initialized", gdb 13) and bpftrace's `ustack` warned
/// it could not read the library's symbols. With gdb installed, it attaches and lists the
/// library.
#[test]
fn a_debugger_attaches_to_a_process_under_bpftime() {
    use object::{Object, ObjectSection};
    let audit = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime_audit.so");
    let bytes = std::fs::read(&audit).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    let dot_text = elf.section_by_name(".text").expect("a .text section");
    let code: u64 = elf.sections().filter(|s| s.kind() == object::SectionKind::Text).map(|s| s.size()).sum();
    assert!(dot_text.size() > 0 && dot_text.size() == code, "all of its code in .text");
    if !Command::new("gdb").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return eprintln!("skipped the debugger: no gdb");
    }
    let target = bpftime_tests::clang::build_target("attachable", false);
    let shm = format!("bpftime-gdb-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
    let mut child = start_piped(&shm, &target, &[]).spawn().unwrap();
    let (mut input, mut line) = attachable_io(&mut child);
    // The target is the child of `bpftime start`.
    let pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap().trim().to_string();
    let out = Command::new("timeout").args(["60", "gdb", "-nx", "-batch", "-p", &pid, "-ex", "info sharedlibrary"]).output().unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && !said.contains("internal-error") && said.contains("libbpftime_audit.so"), "{:?}: {said}", out.status);
    writeln!(input, "run 10").unwrap();
    assert_eq!(line(), "done 55", "the process goes on after the debugger left");
    drop(input);
    assert!(child.wait().unwrap().success());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// A program whose library has initial-exec thread-locals (`DF_STATIC_TLS`, as Rust's dylibs
/// and sanitizer runtimes have) starts under `bpftime start`: with an audit library glibc sets
/// up the thread-locals before it loads the program's libraries, which then take static ones
/// from a small reserve; the reserve is now sized for the program's libraries (64 KiB here),
/// also where a traced program starts it, each way libc has (as `cargo build` starts rustc).
/// Before, it did not start ("cannot allocate memory in static TLS block", exit 127; rustc
/// too, whose driver library takes 23 KiB; and rustc under `cargo build` until the agent
/// wrapped the execs).
#[test]
fn a_program_whose_libraries_have_static_thread_locals_starts() {
    let dir = std::env::temp_dir().join(format!("bpftime-static-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lib.c"), "__thread char big[65536];\nint touch(int i) { big[i] += 1; return big[i]; }\n").unwrap();
    std::fs::write(dir.join("main.c"), "#include <stdio.h>\nint touch(int);\nint main(void) { printf(\"touched %d\\n\", touch(5)); return 0; }\n").unwrap();
    let cc = |args: &[&str]| assert!(Command::new("cc").current_dir(&dir).args(args).status().unwrap().success(), "cc {args:?}");
    cc(&["-shared", "-fPIC", "-O2", "-ftls-model=initial-exec", "lib.c", "-o", "libbigtls.so"]);
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    cc(&["-O2", "main.c", "-L.", "-lbigtls", &rpath, "-o", "bigtls"]);
    let shm = format!("bpftime-static-tls-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
    let out = bpftime_shm(&shm, &["start", "--", dir.join("bigtls").to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stdout) == "touched 1\n", "{:?}: {}{}", out.status, text(&out.stdout), text(&out.stderr));
    // And where a traced program starts it (as `cargo build` starts rustc), each way libc has:
    // the agent's exec wrappers size the room for the program started.
    std::fs::write(dir.join("launch.c"), LAUNCHER).unwrap();
    cc(&["-O2", "launch.c", "-o", "launch"]);
    let out = bpftime_shm(&shm, &["start", "--", dir.join("launch").to_str().unwrap(), dir.join("bigtls").to_str().unwrap()]);
    let ways = ["posix_spawn", "posix_spawnp", "execve", "execv", "execvp", "execvpe", "fexecve", "execl", "execlp", "execle", "vfork", "system"];
    let mut expected: String = ways.iter().map(|w| format!("touched 1\n{w} 0\n")).collect();
    // The variadic ones hand every argument and the environment on (8 arguments: some
    // passed on the stack).
    expected += "1 2 3 4 5 6 7\nexecl echo 0\nBPFTIME_MARK=7\nexecle env 0\n";
    assert_eq!(text(&out.stdout), expected, "{}", text(&out.stderr));
    // The room is no larger where the libraries do not need it: a thread asking for a 32 KiB
    // stack (each thread's block holds the room) starts as without us.
    std::fs::write(
        dir.join("small.c"),
        "#include <pthread.h>\n#include <stdio.h>\nstatic void *run(void *a) { return a; }\nint main(void) { pthread_attr_t at; pthread_t t; pthread_attr_init(&at); pthread_attr_setstacksize(&at, 32768); int rc = pthread_create(&t, &at, run, NULL); if (rc == 0) pthread_join(t, NULL); printf(\"created %d\\n\", rc); return 0; }\n",
    )
    .unwrap();
    cc(&["-O2", "small.c", "-o", "small", "-lpthread"]);
    let out = bpftime_shm(&shm, &["start", "--", dir.join("small").to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "created 0\n", "{}", text(&out.stderr));
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program that starts `argv[1]` (a path) each way libc has, waits for it and prints each
/// way's exit status; then `echo` with 7 arguments by `execl` and `env` with an environment of
/// its own by `execle`.
const LAUNCHER: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    const char *ways[] = {"posix_spawn", "posix_spawnp", "execve", "execv", "execvp", "execvpe", "fexecve", "execl", "execlp", "execle", "vfork", "system", "execl echo", "execle env"};
    char *mark[] = {"BPFTIME_MARK=7", NULL};
    char *args[] = {argv[1], NULL};
    for (unsigned i = 0; i < sizeof ways / sizeof *ways; i++) {
        const char *way = ways[i];
        int status = -1;
        fflush(stdout);
        pid_t pid = -1;
        if (!strcmp(way, "posix_spawn")) {
            posix_spawn(&pid, argv[1], NULL, NULL, args, environ);
        } else if (!strcmp(way, "posix_spawnp")) {
            posix_spawnp(&pid, argv[1], NULL, NULL, args, environ);
        } else if (!strcmp(way, "system")) {
            status = system(argv[1]);
        } else if (!strcmp(way, "vfork")) {
            if ((pid = vfork()) == 0) {
                execve(argv[1], args, environ);
                _exit(126);
            }
        } else if ((pid = fork()) == 0) {
            if (!strcmp(way, "execve")) execve(argv[1], args, environ);
            if (!strcmp(way, "execv")) execv(argv[1], args);
            if (!strcmp(way, "execvp")) execvp(argv[1], args);
            if (!strcmp(way, "execvpe")) execvpe(argv[1], args, environ);
            if (!strcmp(way, "fexecve")) fexecve(open(argv[1], O_RDONLY | O_CLOEXEC), args, environ);
            if (!strcmp(way, "execl")) execl(argv[1], argv[1], NULL);
            if (!strcmp(way, "execlp")) execlp(argv[1], argv[1], NULL);
            if (!strcmp(way, "execle")) execle(argv[1], argv[1], NULL, environ);
            if (!strcmp(way, "execl echo")) execl("/bin/echo", "echo", "1", "2", "3", "4", "5", "6", "7", NULL);
            if (!strcmp(way, "execle env")) execle("/usr/bin/env", "env", NULL, mark);
            _exit(126);
        }
        if (pid > 0)
            waitpid(pid, &status, 0);
        printf("%s %d\n", way, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return 0;
}
"#;

/// A process whose standard error is a pipe nobody reads any more, that ignores SIGPIPE (as
/// Python and servers do), with `BPFTIME_VERBOSE` on: what the agent says as it attaches later
/// fails with EPIPE. It is dropped and the probes count every call. (Before, std's `eprintln!`
/// panicked on the failed write: the link follower died with the attach half done, and on a
/// hit's path a panic across `extern "C"` would have aborted the process.)
#[test]
fn a_closed_standard_error_loses_messages_not_probes() {
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("attachable", false);
    let shm = format!("bpftime-closed-stderr-{}", std::process::id());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
    let mut child = start_piped(&shm, &target, &[]).env("BPFTIME_VERBOSE", "1").stderr(Stdio::piped()).spawn().unwrap();
    let (mut input, mut line) = attachable_io(&mut child);
    drop(child.stderr.take());
    writeln!(input, "nopipe").unwrap();
    assert_eq!(line(), "ignored");
    let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_attached(&shm), "{}", text(&bpftime_shm(&shm, &["link", "list"]).stdout));
    writeln!(input, "run 1000").unwrap();
    assert_eq!(line(), "done 500500");
    drop(input);
    assert!(child.wait().unwrap().success());
    let at = signal_stats(&shm);
    assert_eq!((at(1), at(3)), (500500, 500500));
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// A process that closes every descriptor it did not open (as daemons do) and gets their
/// numbers back for a directory of its own, before probes are attached: the agent's held code
/// cache directory is among them, and it wrote its cache entries into the application's
/// directory through the number. It now checks a held descriptor is still its own before
/// each use, compiles in the process, counts every call, and leaves the directory empty.
#[test]
fn descriptors_the_application_closed_and_reused_are_never_ours_again() {
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("attachable", false);
    let shm = format!("bpftime-closeall-{}", std::process::id());
    let theirs = std::env::temp_dir().join(format!("bpftime-closeall-{}", std::process::id()));
    std::fs::create_dir_all(&theirs).unwrap();
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
    let mut child = start_piped(&shm, &target, &[]).spawn().unwrap();
    let (mut input, mut line) = attachable_io(&mut child);
    writeln!(input, "closeall {}", theirs.display()).unwrap();
    assert_eq!(line(), "reopened 1000");
    let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let attached = wait_attached(&shm);
    assert!(attached, "{}", text(&bpftime_shm(&shm, &["link", "list"]).stdout));
    writeln!(input, "run 1000").unwrap();
    assert_eq!(line(), "done 500500");
    drop(input);
    assert!(child.wait().unwrap().success());
    let at = signal_stats(&shm);
    assert_eq!((at(1), at(3)), (500500, 500500));
    let left: Vec<_> = std::fs::read_dir(&theirs).unwrap().filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    assert!(left.is_empty(), "the application's directory got {left:?}");
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
    let _ = std::fs::remove_dir_all(&theirs);
}

/// Probes attached to a process that gave up root after it started (servers do, often in the
/// workers they fork): it is no longer dumpable, so its `/proc/self/mem` and
/// `/proc/self/task/TID/syscall` belong to root. The agent writes the jumps through the memory
/// file it opened at start (in a forked child, right after the fork), and a thread asleep in a
/// system call is not signalled (nanosleep would return early: it did, after 0 of 1,500 ms,
/// and before that the probes could not be written at all); the executable, in a directory
/// only root may enter, is read through /proc/self/exe. As on the kernel: every call counted,
/// the sleep whole.
#[test]
fn probes_attach_after_the_process_gives_up_root() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipping: giving up root needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let obj = build_example("uprobe_signals");
    // In a directory only root may enter, as a service's often is: the agent reads the
    // executable's symbols through /proc/self/exe once it cannot reach it by its path.
    let dir = std::env::temp_dir().join(format!("bpftime-dropped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = dir.join("attachable");
    std::fs::copy(bpftime_tests::clang::build_target("attachable", false), &target).unwrap();
    for forked in [false, true] {
        let shm = format!("bpftime-dropped-{}-{forked}", std::process::id());
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
        assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
        let mut child = start_piped(&shm, &target, if forked { &["forked"] } else { &[] }).spawn().unwrap();
        let (mut input, mut line) = attachable_io(&mut child);
        writeln!(input, "drop").unwrap();
        assert_eq!(line(), "dropped 0", "forked: {forked}");
        writeln!(input, "sleep 1500").unwrap();
        let out = bpftime_shm(&shm, &["load", obj.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let slept: u64 = line().strip_prefix("slept ").and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(slept >= 1500, "forked: {forked}: the sleep was cut short after {slept} ms");
        assert!(wait_attached(&shm), "forked: {forked}: {}", text(&bpftime_shm(&shm, &["link", "list"]).stdout));
        writeln!(input, "run 1000").unwrap();
        assert_eq!(line(), "done 500500");
        drop(input);
        assert!(child.wait().unwrap().success());
        let at = signal_stats(&shm);
        assert_eq!((at(1), at(3)), (500500, 500500), "forked: {forked}: every call counted");
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bpftime start -- TARGET ARGS` on region `shm`, its standard input and output piped (for
/// `attachable`'s commands).
fn start_piped(shm: &str, target: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpftime"));
    cmd.env("BPFTIME_SHM", shm).args(["start", "--"]).arg(target).args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
    cmd
}

/// The standard input and output lines of `attachable` running as `child`, once it said "ready".
fn attachable_io(child: &mut std::process::Child) -> (std::process::ChildStdin, impl FnMut() -> String) {
    use std::io::{BufRead, BufReader};
    let input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = move || output.next().map(|l| l.unwrap_or_default()).unwrap_or_default();
    assert_eq!(line(), "ready");
    (input, line)
}

/// The values `uprobe_signals` keeps in `signal_stats`, by key (0 entries, 1 their argument
/// sum, 2 returns, 3 their result sum; 0 for a key not there).
fn signal_stats(shm: &str) -> impl Fn(u64) -> u64 {
    let out = bpftime_shm(shm, &["map", "dump", "signal_stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stdout)));
    move |k: u64| v["entries"].as_array().unwrap().iter().find(|e| e["key"]["u64"] == k).map_or(0, |e| e["value"]["u64"].as_u64().unwrap())
}

/// Waits (up to 10 s) until every link of region `shm` says it is attached (one attached, the
/// next may still be on its way: a run started then counted the entries of calls and none of
/// their returns).
fn wait_attached(shm: &str) -> bool {
    (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let list = text(&bpftime_shm(shm, &["link", "list"]).stdout);
        let links: Vec<&str> = list.lines().filter(|l| l.starts_with("link ")).collect();
        !links.is_empty() && links.iter().all(|l| l.contains("(Attached)"))
    })
}

/// `bpftime attach PID` on a Go program (cgo) started without the agent: the agent is loaded
/// on a stack of its own (the stopped thread's may be a goroutine's few kilobytes), hits on
/// goroutines run on the agent's handler stacks (nothing knows which signal handlers the
/// process installed: a hit on a signal stack stays there), and probes attached while the
/// program's threads make system calls through the interception attach at once. Every call
/// of 2,000 goroutines is counted, with its arguments and result, in every run.
#[test]
fn attach_to_a_running_go_program_counts_every_call() {
    let target = bpftime_tests::clang::build_go_target("goroutines");
    let obj = build_example("go_calls");
    for engine in ["jit", "interp"] {
        for run in 0..3 {
            let shm = format!("bpftime-attach-go-{}-{engine}-{run}", std::process::id());
            let _ = bpftime_shm(&shm, &["shm", "remove"]);
            let mut go = Command::new(&target).args(["2000", "wait"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            // The runtime has started its threads and the main goroutine waits in its read.
            bpftime_tests::wait_reading_stdin(go.id());
            let out = bpftime_shm(&shm, &["attach", &go.id().to_string(), "--program", obj.to_str().unwrap(), "--engine", engine]);
            let said = text(&out.stderr);
            assert!(out.status.success() && !said.contains("cannot attach"), "{engine} run {run}: {said}");
            // Attached again (its system calls are intercepted now): the agent there is found.
            let again = bpftime_shm(&shm, &["attach", &go.id().to_string()]);
            assert!(again.status.success() && text(&again.stderr).contains("an agent already runs"), "{}", text(&again.stderr));
            go.stdin.take().unwrap().write_all(b"x").unwrap();
            let done = go.wait_with_output().unwrap();
            assert!(done.status.success(), "{engine} run {run}: {:?}\n{}", done.status, text(&done.stderr));
            assert_eq!(text(&done.stdout).trim(), format!("sum {}", 2000 * 1275));
            let out = bpftime_shm(&shm, &["map", "dump", "go_stats", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stdout)));
            let at = |k: u64| v["entries"].as_array().unwrap().iter().find(|e| e["key"]["u64"] == k).map_or(0, |e| e["value"]["u64"].as_u64().unwrap());
            let counts: Vec<u64> = (0..4).map(at).collect();
            assert_eq!(counts, [100_000, 2000 * 1275, 100_000, 2000 * 1275], "{engine} run {run}: entries, argument sums, returns, result sums");
            let _ = bpftime_shm(&shm, &["shm", "remove"]);
        }
    }
}

/// `bpftime attach PID` on a process whose signal handlers (not behind the agent's wrapper: the
/// agent came after them, or they are installed with the raw system call, as the Go runtime
/// does) run on a signal stack and call a probed function, while a second signal lands as
/// fast: a hit in the first handler stays on the signal stack (were it to move to the agent's
/// stack, the kernel would take the signal stack for free and deliver the second signal over
/// the first handler's frames: crashes and hangs), and a hit in one that interrupted a hit is
/// not counted (it cannot be told from the agent's own calls: at least the loop's calls are).
/// No run crashes or hangs, no handler finds its frame overwritten, and every call the probes
/// saw has its argument and result counted.
#[test]
fn attach_to_a_process_whose_handlers_run_on_a_signal_stack() {
    let target = bpftime_tests::clang::build_target("signals", false);
    let obj = build_example("uprobe_signals");
    for (mode, run) in ["nested", "rawnested"].into_iter().flat_map(|m| (0..4).map(move |r| (m, r))) {
        let shm = format!("bpftime-attach-altstack-{}-{mode}-{run}", std::process::id());
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
        let mut app = Command::new(&target).args(["50000", mode]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        bpftime_tests::wait_reading_stdin(app.id());
        let out = bpftime_shm(&shm, &["attach", &app.id().to_string(), "--program", obj.to_str().unwrap()]);
        assert!(out.status.success(), "{mode} run {run}: {}", text(&out.stderr));
        app.stdin.take().unwrap().write_all(b"x").unwrap();
        // A hang is a failure too: the process is killed after 60 s.
        let pid = app.id() as i32;
        let watchdog = std::thread::spawn(move || {
            for _ in 0..600 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                // SAFETY: kill(2) with signal 0 only checks the process we started.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    return;
                }
            }
            // SAFETY: kill(2) on the process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let done = app.wait_with_output().unwrap();
        let _ = watchdog.join();
        let said = text(&done.stdout);
        assert!(done.status.success() && said.ends_with(" clobbered 0\n"), "{mode} run {run}: {:?} {said}{}", done.status, text(&done.stderr));
        let at = signal_stats(&shm);
        let (entries, args, returns, results) = (at(0), at(1), at(2), at(3));
        assert!(entries >= 50_000 && (entries, args) == (returns, results), "{mode} run {run}: {said} {entries} {args} {returns} {results}");
        let _ = bpftime_shm(&shm, &["shm", "remove"]);
    }
}

/// Counts the kernel's syscalls:sys_enter_openat / sys_exit_openat events on marker files for
/// `cmd`, with bpftrace (as root, tracefs mounted if it is not); None where that cannot run.
fn kernel_marker_opens(cmd: &str) -> Option<(u64, u64)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("bpftrace").arg("--version").output().is_err() {
        eprintln!("skipped the kernel comparison: needs root and bpftrace");
        return None;
    }
    if !bpftime_tests::kernel::tracefs_mounted() {
        return None;
    }
    let script = r#"tracepoint:syscalls:sys_enter_openat /strncmp(str(args->filename), "/tmp/bpftime-open-marker", 24) == 0/ { @enter = count(); @open[tid] = 1; }
tracepoint:syscalls:sys_exit_openat /@open[tid] == 1/ { if (args->ret >= 0) { @ok = count(); } delete(@open[tid]); }"#;
    let out = Command::new("bpftrace").args(["-e", script, "-c", cmd]).output().ok()?;
    let text = text(&out.stdout);
    let get = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("@{name}: ")).and_then(|v| v.trim().parse().ok()));
    Some((get("enter")?, get("ok")?))
}

/// System call tracepoints in userspace: opensnoop-like programs see every openat of the
/// target, through libc, syscall(3) and an inline `syscall`, in a second thread, in a forked
/// child and in a library loaded later with dlopen, with the file name and result; a read interrupted by a signal returns EINTR
/// or is restarted as without tracing; the counts equal the kernel's for the same target.
#[test]
fn syscall_tracepoints_see_every_call_like_the_kernel() {
    let obj = build_example("opensnoop");
    let opens = bpftime_tests::clang::build_target("opens", false);
    bpftime_tests::clang::build_target("opener", true);
    let n = 20u64;
    let cmd = format!("{} {n}", opens.display());
    // The 10 n opens and the one that creates the marker file.
    let marker_opens = 10 * n + 1;
    for engine in ["jit", "interp"] {
        let out = bpftime(&["run", "--engine", engine, obj.to_str().unwrap(), "--", opens.to_str().unwrap(), &n.to_string()]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{engine}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), format!("opened {} interrupted EINTR restarted 1", 10 * n), "{engine}");
        let counts = format!("  0 => {marker_opens}\n  1 => {marker_opens}\n");
        assert!(stderr.contains(&counts), "{engine}: marker opens at entry and successes at exit: {stderr}");
        let records =
            stderr.lines().filter(|l| l.starts_with("ringbuf `opens`") && l.contains("name: \"/tmp/bpftime-open-marker-") && !l.contains("ret: -")).count();
        assert_eq!(records as u64, marker_opens, "{engine}: one record per marker open, with its result");
    }
    if let Some((enter, ok)) = kernel_marker_opens(&cmd) {
        assert_eq!((enter, ok), (marker_opens, marker_opens), "the kernel's tracepoints on the same target");
    }
    // syscount-like raw sys_enter/sys_exit programs: every openat counted.
    // (Without the test harness's LD_LIBRARY_PATH, whose folders the loader would search.)
    let obj = build_example("syscount");
    let out = Command::new(env!("CARGO_BIN_EXE_bpftime"))
        .args(["run", obj.to_str().unwrap(), "--", opens.to_str().unwrap(), &n.to_string()])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // And dlopen's own openat of libopener.so, and the dynamic loader's of its cache and libc
    // before any code of ours ran.
    assert!(stderr.contains(&format!("  257 => {}\n", marker_opens + 3)), "openat calls by number: {stderr}");
}

/// SIGSYS and SIGTRAP, which the agent handles, end a process that leaves them to their default
/// action as they do without us, with system call programs (SIGSYS's handler is the
/// interception's) and with uprobes: raised after libc's call sites for them ran once (and were
/// rewritten). Before, the action could not be put back through a rewritten `rt_sigaction` site
/// (SIGSYS raised again for ever), and a raised SIGTRAP was dropped (the process lived on).
#[test]
fn default_actions_of_the_agents_signals_end_the_process_as_without_us() {
    let target = bpftime_tests::clang::build_target("raises", false);
    let target = target.to_str().unwrap();
    for (sig, status) in [("sys", 128 + libc::SIGSYS), ("trap", 128 + libc::SIGTRAP)] {
        let native = Command::new(target).arg(sig).output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(native.status.signal(), Some(status - 128), "{sig} without us");
        for obj in [build_example("opensnoop"), build_example("uprobe_calls")] {
            let out = bpftime(&["run", obj.to_str().unwrap(), "--", target, sig]);
            let stderr = text(&out.stderr);
            assert!(stderr.contains(&format!("exited with {status}")) && !text(&out.stdout).contains("survived"), "{sig} under {}: {stderr}", obj.display());
        }
    }
}

/// A program run under Valgrind, which makes the program's system calls from code of its own:
/// the dynamic loader's record and system call interception stand aside (Syscall User Dispatch
/// would stop Valgrind's own calls: the process died of SIGSYS), uprobes still count.
#[test]
fn programs_under_valgrind_live_and_keep_their_uprobes() {
    let Some(valgrind) = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("valgrind")).find(|v| v.exists())) else {
        eprintln!("skipped: no valgrind");
        return;
    };
    let valgrind = valgrind.to_str().unwrap();
    let opensnoop = build_example("opensnoop");
    let out = bpftime(&["run", opensnoop.to_str().unwrap(), "--", valgrind, "-q", "/bin/true"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success() && stderr.contains("system call programs cannot run here: Valgrind"), "{stderr}");
    let obj = build_example("uprobe_calls");
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", valgrind, "-q", "--smc-check=all", &calls_target(), "100", "2"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success() && stderr.contains("exited with 0"), "{stderr}");
    assert!(stderr.contains("  0 => 200\n"), "every add() counted: {stderr}");
}

/// `bpftime run` of the `syscount` example on C target `target` with argument `arg` on
/// `engine`, which must succeed: its stdout and stderr (the maps' dump).
fn syscount_run(engine: &str, target: &str, arg: &str) -> (String, String) {
    let obj = build_example("syscount");
    let target = bpftime_tests::clang::build_target(target, false);
    let out = bpftime(&["run", "--engine", engine, obj.to_str().unwrap(), "--", target.to_str().unwrap(), arg]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{engine}: {stdout}{stderr}");
    (stdout, stderr)
}

/// The returns of system call `nr` that a `syscount` dump (`syscount_run`'s stderr) counts.
fn syscount_of(dump: &str, nr: u32) -> u64 {
    dump.lines().find_map(|l| l.strip_prefix(&format!("  {nr} => "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// vfork, posix_spawn (clone3) and a failing execve under system call interception: the
/// children run and exec as without it, and the callers' returns from the calls made in place
/// reach sys_exit programs (the kernel counts the same 5 + 5 in the parent, and also each
/// child's own return, which we do not see; wait4 is counted as the kernel counts it). The
/// children's execs are seen as the kernel sees them: a vfork child runs without interception,
/// so the image it starts runs the call's entry programs (its caller left no mark) and then
/// its exit programs; before, their entries were lost and their exits found no start.
#[test]
fn vfork_spawn_and_failed_execve_keep_their_semantics_and_report_their_exits() {
    for engine in ["jit", "interp"] {
        let (stdout, stderr) = syscount_run(engine, "spawns", "5");
        assert_eq!(stdout.trim(), "10 of 10 children ok, execve failed: No such file or directory", "{engine}");
        let count = |nr| syscount_of(&stderr, nr);
        assert_eq!(count(58), 5, "{engine}: vfork returns in the parent: {stderr}");
        assert_eq!(count(56) + count(435), 5, "{engine}: posix_spawn's clone returns in the parent: {stderr}");
        // The failed execve's return, that of the execve that started the target (made by
        // bpftime without the agent: its entry runs in the new image, its exit too), and those
        // of the ten children's execs of /bin/true (the kernel's 12 too).
        assert_eq!(count(59), 12, "{engine}: the execves' returns: {stderr}");
        assert_eq!(count(61), 10, "{engine}: wait4: {stderr}");
    }
}

/// A thread that takes a thread pointer of its own (`own_tls.c`: arch_prctl ARCH_SET_FS, as
/// Go's runtime does in a program built without cgo) and makes raw calls with it: our code
/// cannot run on it (our thread-locals are read through that pointer), so the thread leaves
/// interception at that call and goes on natively. Before, the process died of SIGSEGV in our
/// dispatch right after the call (an unmodified Go program built with `-linkmode external` and
/// no cgo did too, under bpftrace counting system calls). The calls before it are still seen.
#[test]
fn a_thread_with_a_thread_pointer_of_its_own_runs_on_untraced() {
    for engine in ["jit", "interp"] {
        let (stdout, stderr) = syscount_run(engine, "own_tls", "5");
        assert_eq!(stdout, "xxxxx\nwrote 5 sums 15 15\n", "{engine}: {stderr}");
        // Its arch_prctl(ARCH_GET_FS) through libc, before.
        assert_eq!(syscount_of(&stderr, 158), 1, "{engine}: {stderr}");
    }
    // Probes on a function it calls there: those calls run as without probes (our handlers
    // cannot run on such a thread), the calls on glibc's thread pointer are counted at both
    // ends. Before, the process died of SIGSEGV at the first hit (as an unmodified Go program
    // built without cgo did under `bpftrace -e 'uprobe:...:os.Remove'`).
    let obj = build_example("uprobe_signals");
    let target = bpftime_tests::clang::build_target("own_tls", false);
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", target.to_str().unwrap(), "100"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && stdout.ends_with("wrote 100 sums 5050 5050\n"), "{stdout}{stderr}");
    for (key, want) in [(0, 100), (1, 5050), (2, 100), (3, 5050)] {
        assert!(stderr.contains(&format!("  {key} => {want}\n")), "key {key}: {stderr}");
    }
}

/// A `vfork` child killed while a call our code made for it blocks (it runs on its parent's
/// thread-locals, and died before our code put them back): the parent goes on with its own
/// state, so its later calls, at sites never seen before (`getppid`) and its `wait4`, are all
/// seen. Before, the child's half-done work left the parent's selector open: none were.
#[test]
fn a_vfork_child_killed_inside_our_code_leaves_its_parent_traced() {
    for engine in ["jit", "interp"] {
        let (stdout, stderr) = syscount_run(engine, "vfork_killed", "1000");
        assert_eq!(stdout.trim(), "child killed by 9, getppid 1000", "{engine}");
        let count = |nr| syscount_of(&stderr, nr);
        assert_eq!((count(110), count(61), count(58)), (1000, 1, 1), "{engine}: getppid, wait4 and vfork returns in the parent: {stderr}");
    }
}

/// `kill` (or `timeout`) on `bpftime start --` / `bpftime load --` reaches the command it runs,
/// which ends as it would alone (a loader prints its results and detaches), and its exit status
/// comes back; the command is not left running without its parent.
#[test]
fn a_signal_to_bpftime_reaches_the_command_it_runs() {
    let shm = format!("bpftime-forward-{}", std::process::id());
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo no signal";
    for verb in ["start", "load"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime")).args(["--shm", &shm, verb, "--", "sh", "-c", script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "ready\n", "{verb}");
        // SAFETY: kill(2) on the child we started.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "got TERM\n", "{verb}: the command got the signal");
        assert_eq!(c.wait().unwrap().code(), Some(7), "{verb}: its exit status");
    }
    bpftime_tests::remove_region(&shm);
}

/// `bpftime attach` refuses a stopped process (it would not run the calls that load the agent,
/// and the process must not be left half-way) and says why; resumed, the process runs on.
#[test]
fn attach_refuses_a_stopped_process_and_leaves_it_whole() {
    use std::io::{BufRead, BufReader};
    let shm = format!("bpftime-attach-stopped-{}", std::process::id());
    let mut target = Command::new(bpftime_tests::clang::build_target("attachable", false)).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = target.id();
    let mut input = target.stdin.take().unwrap();
    let mut output = BufReader::new(target.stdout.take().unwrap()).lines();
    assert_eq!(output.next().unwrap().unwrap(), "ready");
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    // Half the time the stop is still on its way (a thread or none stopped yet): attach must
    // refuse then too. The other half it has landed.
    if pid.is_multiple_of(2) {
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let out = bpftime_shm(&shm, &["attach", &pid.to_string()]);
    assert!(!out.status.success() && text(&out.stderr).contains(&format!("process {pid} is stopped")), "{}", text(&out.stderr));
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    writeln!(input, "run 100").unwrap();
    assert_eq!(output.next().unwrap().unwrap(), "done 5050");
    writeln!(input, "quit").unwrap();
    assert!(target.wait().unwrap().success());
    let _ = bpftime_shm(&shm, &["shm", "remove"]);
}

/// `bpftime start` marks the exec it makes (without the agent) in the environment, so that the
/// agent runs that call's entry programs; the agent takes the mark out of the environment the
/// exec left, before the program reads it, even from bash, whose `getenv` is its own (a mark
/// left there would reach bash's children and their execs would be reported twice).
#[test]
fn the_mark_of_an_untraced_exec_never_reaches_the_program() {
    let shm = format!("bpftime-cli-exec-mark-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime_shm(&shm, &["shm", "create"]).status.success());
    let o = bpftime_shm(&shm, &["start", "--", "bash", "-c", "echo \"[$BPFTIME_EXEC_UNTRACED]\"; env | grep -c BPFTIME_EXEC_UNTRACED"]);
    assert_eq!(text(&o.stdout), "[]\n0\n", "{}", text(&o.stderr));
    bpftime_tests::remove_region(&shm);
}

/// `bpftime map dump` (here `bpftime run`'s dump at exit) prints keys and values through the
/// BTF types the object gave its maps: a struct field by field.
#[test]
fn map_dumps_format_values_from_their_btf() {
    let obj = build_example("map_walks");
    let calls = bpftime_tests::clang::build_target("calls", false);
    let shm = format!("bpftime-cli-btf-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let attach = format!("on_add={}:add", calls.display());
    let out = bpftime_shm(&shm, &["run", obj.to_str().unwrap(), "--attach", &attach, "--", calls.to_str().unwrap(), "50"]);
    bpftime_tests::remove_region(&shm);
    // The dump follows the target's output, on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // 50 calls; each array walk sees indexes 0 to 4 (sum 10) and stops; the values are the
    // sums of a % 16 slots 0 to 4 before each walk.
    let values: u64 = (0..50u64).map(|n| (0..=n).filter(|a| a % 16 < 5).sum::<u64>()).sum();
    let want = format!("  1 => {{ keys: 500, values: {values}, seen: 250, deleted: 0 }}\n");
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
}

/// The values (as u64s, in entry order) of map `map` in the JSON dump `bpftime run --json`
/// writes after the target's own output on stderr (`stderr`).
fn run_map_values(stderr: &str, map: &str) -> Vec<u64> {
    let json = stderr.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON dump in: {stderr}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let m = v["maps"].as_array().and_then(|m| m.iter().find(|m| m["name"] == map)).unwrap_or_else(|| panic!("no map `{map}`: {json}"));
    m["entries"].as_array().unwrap().iter().map(|e| e["value"]["u64"].as_u64().unwrap()).collect()
}

/// System call interception on threads with an 8 KiB signal stack (every Rust thread has one;
/// our SIGSYS handler runs on it): calls from sites of their own (the first comes as a signal),
/// a signal whose handler is not SA_ONSTACK landing while such a call blocks (the handler runs
/// on the thread's stack), the signal stack replaced from such a site, a thread's exit. The
/// target prints what it saw: the same as without interception, and it does not crash
/// (before, such a thread died on its signal stack's guard page).
#[test]
fn system_calls_on_threads_with_small_signal_stacks_behave_as_without_us() {
    let obj = build_example("syscount");
    let target = bpftime_tests::clang::build_target("signal_stacks", false);
    let native = Command::new(&target).output().unwrap();
    assert!(native.status.success());
    for run in 0..3 {
        let shm = format!("bpftime-cli-sigstacks-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let out = bpftime_shm(&shm, &["run", obj.to_str().unwrap(), "--json", "--", target.to_str().unwrap()]);
        bpftime_tests::remove_region(&shm);
        let err = text(&out.stderr);
        assert!(out.status.success(), "run {run}: {err}");
        assert_eq!(text(&out.stdout), text(&native.stdout), "run {run}");
        assert!(run_map_values(&err, "calls").iter().sum::<u64>() > 1000, "run {run}: the calls were seen: {err}");
    }
}

/// A library unloaded and loaded again at the same address has its `syscall` instructions back
/// as the file has them: a site system call interception rewrote before is rewritten afresh
/// (it was taken for rewritten, and the thread sent back to it for ever).
#[test]
fn system_call_sites_of_a_library_loaded_again_are_rewritten_again() {
    let obj = build_example("syscount");
    let target = bpftime_tests::clang::build_target("reloads", false);
    let plugin = bpftime_tests::clang::build_target("syscall_plugin", true);
    let shm = format!("bpftime-cli-reloads-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_bpftime"))
        .args(["--shm", &shm, "run", obj.to_str().unwrap(), "--"])
        .arg(&target)
        .arg(&plugin)
        .output()
        .unwrap();
    bpftime_tests::remove_region(&shm);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "round 0: ok\nround 1: ok\nround 2: ok\n");
}

/// A Go program's goroutines make system calls and call a probed Go function on stacks that
/// start at 2 KiB: system call interception (the signal's frame on the thread's signal stack,
/// the handlers on the agent's) and the probes leave them alone, and count exactly: 2,000
/// goroutines each writing one byte 50 times and calling `main.add` as often, 3 runs.
#[test]
fn system_calls_and_probes_of_goroutines_are_counted_exactly() {
    let obj = build_example("go_calls");
    let target = bpftime_tests::clang::build_go_target("goroutines");
    for run in 0..3 {
        let shm = format!("bpftime-cli-go-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let out = bpftime_shm(&shm, &["run", obj.to_str().unwrap(), "--json", "--", target.to_str().unwrap(), "2000", "write"]);
        bpftime_tests::remove_region(&shm);
        let err = text(&out.stderr);
        assert!(out.status.success(), "run {run}: {err}");
        assert_eq!(text(&out.stdout).trim(), format!("sum {}", 2000 * 1275), "run {run}");
        let calls = 100_000;
        assert_eq!(run_map_values(&err, "go_stats"), [calls, 2000 * 1275, calls, 2000 * 1275, calls, calls], "run {run}: {err}");
    }
}

/// `uprobe.multi` / `uretprobe.multi` sections with a glob attach to every function of the
/// binary it matches, as libbpf attaches them: `*a??` on the `calls` target is add, fact, main,
/// _start and what else the C runtime names so (gcc's `__do_global_dtors_aux`), each entry and
/// return counted per function. (The return probe on _start is refused: the kernel's would
/// overwrite argc; the target then read a wrong argument count, or crashed.)
#[test]
fn multi_uprobe_sections_attach_every_function_their_glob_matches() {
    let obj = build_example("uprobe_multi");
    let calls = bpftime_tests::clang::build_target("calls", false);
    let shm = format!("bpftime-cli-multi-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = bpftime_shm(&shm, &["run", obj.to_str().unwrap(), "--json", "--", calls.to_str().unwrap(), "50"]);
    bpftime_tests::remove_region(&shm);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stderr);
    let counts = |map: &str| -> Vec<u64> {
        let mut c: Vec<u64> = run_map_values(&json, map);
        c.sort_unstable();
        c
    };
    // fact(10) ten times, add 50 times, main, _start and the C runtime's functions once; each
    // returns as often but _start.
    let (entries, returns) = (counts("entries"), counts("returns"));
    assert!(entries.len() >= 4 && entries.ends_with(&[10, 50]) && entries[..entries.len() - 2].iter().all(|&n| n == 1), "{json}");
    assert_eq!(returns.len(), entries.len() - 1, "every function's returns but _start's: {json}");
    assert!(returns.ends_with(&[10, 50]) && returns[..returns.len() - 2].iter().all(|&n| n == 1), "{json}");
    assert!(text(&out.stderr).contains("a return probe on the program's entry point (_start) is not attached"), "{}", text(&out.stderr));
}

/// `bpf_override_return` in a `sys_enter` program skips the call and gives the caller the
/// result (bpftime's error injection at system calls): `cat` of files under
/// /tmp/bpftime-inject* fails with EACCES although they are there and readable, the exit
/// program sees the injected -EACCES, and other files open as usual. The first call from a
/// site arrives as a signal, the later ones through the site's rewritten jump: both skip.
#[test]
fn an_override_at_a_system_call_entry_skips_the_call() {
    let obj = build_example("syscall_inject");
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let files: Vec<String> = ["inject-a", "other-a", "inject-b", "other-b"].iter().map(|f| format!("/tmp/bpftime-{f}-{pid}")).collect();
    for f in &files {
        std::fs::write(f, format!("{f}\n")).unwrap();
    }
    let shm = format!("bpftime-cli-inject-{pid}");
    bpftime_tests::remove_region(&shm);
    let out = Command::new(env!("CARGO_BIN_EXE_bpftime"))
        .args(["--shm", &shm, "run", obj.to_str().unwrap(), "--json", "--", "/bin/cat"])
        .args(&files)
        .env("LC_ALL", "C")
        .current_dir(&dir)
        .output()
        .unwrap();
    bpftime_tests::remove_region(&shm);
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let err = text(&out.stderr);
    for f in [&files[0], &files[2]] {
        assert!(err.contains(&format!("cat: {f}: Permission denied")), "{err}");
    }
    assert_eq!(text(&out.stdout), format!("{}\n{}\n", files[1], files[3]), "the other files are read");
    assert_eq!(run_map_values(&err, "stats"), [2, 2], "two calls injected, their exits saw -EACCES: {err}");
}

/// The record of the dynamic loader's system calls (`libbpftime_audit.so`, which `bpftime run`
/// names in LD_AUDIT) leaves the application as it was: `examples/targets/loader_window.c`'s
/// constructor passes a bad path pointer, blocks a signal, sets a signal stack and starts a
/// thread while the record may run (to the end of the constructors where no agent takes over:
/// LD_AUDIT alone), also with SIGSYS blocked from the start. It prints the same as without the
/// record each time. The first record crashed on the bad pointer and left SIGUSR1 unblocked and
/// SIGSYS blocked (a mask changed in the handler was put back by its return). Under `bpftime
/// run` with system call programs, a process started with SIGSYS blocked was killed by its
/// first intercepted call; interception keeps SIGSYS unblocked (as the hook engine keeps
/// SIGTRAP), which the application's mask shows.
#[test]
fn the_loaders_record_leaves_the_application_as_it_was() {
    let target = bpftime_tests::clang::build_target("loader_window", false);
    let audit = std::path::Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime_audit.so");
    assert!(audit.exists(), "{} is built with the agent", audit.display());
    let obj = build_example("syscount");
    for sigsys_blocked in [false, true] {
        let run = |cmd: &mut Command| {
            if sigsys_blocked {
                use std::os::unix::process::CommandExt;
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, libc::SIGSYS);
                        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                        Ok(())
                    });
                }
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{:?}: {}{}", out.status, text(&out.stdout), text(&out.stderr));
            text(&out.stdout)
        };
        let alone = run(&mut Command::new(&target));
        assert!(alone.starts_with(&format!("SIGUSR1 blocked 1, SIGSYS blocked {}", sigsys_blocked as u8)), "{alone}");
        let recorded = run(Command::new(&target).env("LD_AUDIT", &audit));
        assert_eq!(recorded, alone, "LD_AUDIT alone, SIGSYS blocked {sigsys_blocked}");
        let traced = run(Command::new(env!("CARGO_BIN_EXE_bpftime")).args(["run", obj.to_str().unwrap(), "--"]).arg(&target));
        assert_eq!(traced, alone.replace("SIGSYS blocked 1", "SIGSYS blocked 0"), "under bpftime run, SIGSYS blocked {sigsys_blocked}");
    }
}
