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

#[test]
fn errors_are_one_clear_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("bpftime-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x95, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], "not a multiple of 8"),
        (b"\x7fELF\x02\x01\x01 not really".to_vec(), "not an ELF object"),
        (vec![0xb7, 0x0a, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0], "verifier: insn 0: r10 is read-only"),
        (vec![0x79, 0x10, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0], "insn 0: out-of-bounds load of 8 bytes at 0x0"),
        (vec![0x05, 0, 0xff, 0xff, 0, 0, 0, 0], "loop budget exhausted"),
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
        let stdout = text(&out.stdout);
        // The target prints first, then the JSON document.
        assert!(stdout.starts_with("sum 5994000 fact 3628800"), "{engine}: results unchanged under probes: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).expect("JSON");
        assert_eq!(v["exit_code"], 0);
        let stats = v["maps"].as_array().unwrap().iter().find(|m| m["name"] == "stats").expect("stats map");
        assert_eq!(json_value(stats, 0), 4000, "{engine}: add() calls");
        assert_eq!(json_value(stats, 1), 5994000, "{engine}: sum of add() results from the uretprobe");
        assert_eq!((json_value(stats, 4), json_value(stats, 5)), (10, 10), "{engine}: fact() entries and returns");
        assert_eq!(json_value(stats, 6), 3628800, "{engine}: largest fact() result");
    }
    // Human-readable by default; the target's exit code is passed on.
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", &target, "10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("exited with 0") && s.contains("map 1 `stats`: array") && s.contains("  0 => 10\n"), "{s}");
    let out = bpftime(&["run", obj.to_str().unwrap(), "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
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
}
