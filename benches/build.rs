//! Builds every workload in `workloads/` twice: as an eBPF object (clang -target bpf) and as
//! native code linked into the benchmarks (cc), from the same C source.

use std::path::PathBuf;
use std::process::Command;

const WORKLOADS: &[&str] = &["log2", "prime", "memcpy", "strcmp", "switch", "mix"];

fn clang() -> String {
    if let Ok(c) = std::env::var("CLANG") {
        return c;
    }
    for c in ["clang-14", "clang"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!("no clang found: install clang-14 (the README's commands do) or set CLANG");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = clang();
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=workloads/workload.h");
    let mut native = cc::Build::new();
    native.opt_level(2).warnings(false);
    for w in WORKLOADS {
        let src = format!("workloads/{w}.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{w}.bpf.o"));
        let status = Command::new(&clang).args(["-target", "bpf", "-mcpu=v3", "-O2", "-g", "-c", &src, "-o"]).arg(&obj).status().expect("run clang");
        assert!(status.success(), "clang failed on {src}");
        native.file(&src);
    }
    native.compile("workloads_native");
    // Map-operation programs (eBPF only).
    for name in ["map_ops", "uprobe_bench", "syscall_bench"] {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-mcpu=v3", "-O2", "-g", "-I/usr/include/x86_64-linux-gnu", "-c", &src, "-o"])
            .arg(out.join(format!("{name}.bpf.o")))
            .status()
            .expect("run clang");
        assert!(status.success(), "clang failed on {src}");
    }
    // A leaf in a C shared library, as gcc -O2 builds it (probed by the uprobe benchmark).
    println!("cargo:rerun-if-changed=targets/leaf.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(cc).args(["-O2", "-shared", "-fPIC", "targets/leaf.c", "-o"]).arg(out.join("libbench_leaf.so")).status().expect("run cc");
    assert!(status.success(), "cc failed on targets/leaf.c");
}
