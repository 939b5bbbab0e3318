//! Builds `libbpftime_early.so` (see `early/early.c`), which the agent needs (DT_NEEDED, found
//! beside it through `$ORIGIN`), and `libbpftime_audit.so` (see `early/audit.c`, named in
//! LD_AUDIT by `bpftime start`), and puts them beside the agent in the target folder.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "early/early.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib = out.join("libbpftime_early.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wl,-soname,libbpftime_early.so", "-Wl,--no-as-needed", "-lgcc_s", "-o"])
        .arg(&lib)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(status.success(), "{cc} failed to build {}", lib.display());
    // No C library, nothing the compiler would take from one, no stack protector (it runs
    // before the loader has set anything up for the program).
    let audit_src = "early/audit.c";
    println!("cargo:rerun-if-changed={audit_src}");
    let audit = out.join("libbpftime_audit.so");
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-tree-loop-distribute-patterns"])
        .args(["-Wl,-soname,libbpftime_audit.so", "-Wl,-z,now", "-o"])
        .arg(&audit)
        .arg(audit_src)
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(status.success(), "{cc} failed to build {}", audit.display());
    // Its code is linked as one section of its own (the range Syscall User Dispatch lets
    // through, bounded by the linker's __start_/__stop_ symbols, already resolved), renamed
    // `.text` afterwards: debuggers and symbolisers expect one (gdb attaching to any process
    // the library was loaded into failed with "sect_index_text not initialized"; bpftrace's
    // `ustack` warned that it could not read its symbols).
    let renamed = ["objcopy", "llvm-objcopy", "llvm-objcopy-14"]
        .iter()
        .any(|tool| Command::new(tool).args(["--rename-section", "bpftime_audit_text=.text"]).arg(&audit).status().is_ok_and(|s| s.success()));
    if !renamed {
        println!("cargo:warning=objcopy not found: libbpftime_audit.so keeps its code in a section debuggers do not read");
    }
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out: the agent is written to
    // <target>/<profile> (and deps/ below it), where `$ORIGIN` will look.
    let profile_dir = out.ancestors().nth(3).expect("OUT_DIR is inside the target folder");
    for dir in [profile_dir.to_path_buf(), profile_dir.join("deps")] {
        let _ = std::fs::create_dir_all(&dir);
        for built in [&lib, &audit] {
            let to = dir.join(built.file_name().expect("a file name"));
            let _ = std::fs::remove_file(&to);
            std::fs::copy(built, &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    // `-z now`: every import is bound at load time, so no lazy binding runs later in a probe, a
    // signal handler or each forked child (which would redo it: a written GOT page per child).
    for arg in ["-Wl,--no-as-needed", "-lbpftime_early", "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN", "-Wl,-z,now"] {
        println!("cargo:rustc-link-arg-cdylib={arg}");
    }
}
