//! `bpftime aot compile` output linked into a C program with `libbpftime_aot.a`
//! (examples/aot/records.c): the system linker places the code and its import slots, the
//! library binds them, and the programs give what C computes natively, with the maps counting
//! exactly; code compiled for other inputs is not run (the interpreter runs the program).

use bpftime_object::Object;
use bpftime_runtime::Runtime;
use bpftime_tests::clang::build_example;
use bpftime_tests::repo_root;
use object::{Object as _, ObjectSymbol};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bpftime-aot-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `examples/aot/records.c` with `aot_object` and the library.
fn link_records(dir: &Path, aot_object: &Path) -> PathBuf {
    let root = repo_root();
    let lib = root.join("target/debug/libbpftime_aot.a");
    assert!(lib.exists(), "{} is missing: `cargo build --workspace` builds it", lib.display());
    let exe = dir.join("records");
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-I")
        .arg(root.join("aot-runtime/include"))
        .arg(root.join("examples/aot/records.c"))
        .arg(aot_object)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    exe
}

fn run(exe: &Path, checks: Option<&str>) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg("1000").env_remove("BPFTIME_CHECKS");
    if let Some(c) = checks {
        cmd.env("BPFTIME_CHECKS", c);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// What the programs must give, natively or not: every hash equal to C's, exact counts, a
/// fault reported as -EFAULT with the program running on.
fn assert_results(stdout: &str) {
    for line in [
        "records 1000 bytes 298500 mismatches 0 ",
        "totals[0] = 1000 (0)\n",
        "totals[1] = 298500 (0)\n",
        // Records of length 0 (i = 0 and 600) have no first byte to count.
        "by_tag[0] = 198 (ok)\n",
        "by_tag[4] = 200 (ok)\n",
        "by_tag[5] = 0 (No such file or directory)\n",
        "read_at 8: rc 0 r0 42\n",
        "read_at 1048576: rc -14 r0 0\n",
        "unknown: rc -2\n",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
}

#[test]
fn aot_objects_link_into_c_programs_and_run_their_code() {
    let dir = scratch();
    let bpf = build_example("aot_records");
    let bytes = std::fs::read(&bpf).unwrap();
    let (aot, left_out) = Runtime::aot_compile(&Object::parse(&bytes).unwrap(), &bytes).expect("compiles");
    assert!(left_out.is_empty(), "{left_out:?}");
    // Self-contained: everything the code takes from its process is a slot defined in the
    // object, so the C program needs nothing else from it.
    let file = object::File::parse(&*aot).unwrap();
    let undefined: Vec<String> =
        file.symbols().filter(|s| s.is_undefined() && !s.name().unwrap_or("").is_empty()).map(|s| s.name().unwrap().to_string()).collect();
    assert!(undefined.is_empty(), "undefined symbols: {undefined:?}");
    // Nor does it define global functions: a program named like a function of the C program
    // or of libc (`write`) must not take its place.
    let global: Vec<String> = file.symbols().filter(|s| s.is_global() && s.kind() == object::SymbolKind::Text).map(|s| s.name().unwrap().to_string()).collect();
    assert!(global.is_empty(), "global functions: {global:?}");
    let aot_path = dir.join("records.aot.o");
    std::fs::write(&aot_path, &aot).unwrap();
    let exe = link_records(&dir, &aot_path);

    let native = run(&exe, None);
    assert!(native.contains("fnv1a: native\n") && native.contains("read_at: native\n"), "{native}");
    assert_results(&native);
    // One handle at a time runs the compiled code (its slots are the handle's); others have
    // maps of their own and run in the interpreter; once closed, the code serves the next.
    for line in [
        "value size of totals: 8\n",
        "second handle: another open handle runs the compiled code\n",
        "records: first 1001, second 3\n",
        "after both closed: native\n",
    ] {
        assert!(native.contains(line), "missing `{line}` in:\n{native}");
    }

    // Compiled with the proven accesses unchecked: with every check asked for, that code is not
    // run, the interpreter is, with the same results.
    let checked = run(&exe, Some("all"));
    assert!(checked.contains("fnv1a: it was compiled for another build, CPU, check mode or maps\n"), "{checked}");
    assert_results(&checked);
    std::fs::remove_dir_all(&dir).unwrap();
}
