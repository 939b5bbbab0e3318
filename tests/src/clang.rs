//! Builds the eBPF C programs of `examples/bpf/` with clang, as the README installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The clang to use: `$CLANG`, else `clang-14`, else `clang`.
pub fn clang() -> Result<String, String> {
    if let Ok(c) = std::env::var("CLANG") {
        return Ok(c);
    }
    for c in ["clang-14", "clang"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c.to_string());
        }
    }
    Err("no clang found: install clang-14 (the README's test command does) or set CLANG".into())
}

/// Compiles `examples/bpf/<name>.bpf.c` (cached under target/bpf-examples) and returns the
/// object's path. Panics with clang's message when it fails: the examples must build.
pub fn build_example(name: &str) -> PathBuf {
    let root = crate::repo_root();
    let src = root.join("examples/bpf").join(format!("{name}.bpf.c"));
    let out_dir = root.join("target/bpf-examples");
    std::fs::create_dir_all(&out_dir).expect("create target/bpf-examples");
    let out = out_dir.join(format!("{name}.bpf.o"));
    if is_fresh(&out, &src) {
        return out;
    }
    // Objects built elsewhere (a GPU machine has no clang) are used as they are.
    let clang = match clang() {
        Ok(c) => c,
        Err(_) if out.exists() => return out,
        Err(e) => panic!("{e}"),
    };
    // A unique temporary name, renamed into place, so parallel tests never see a half file.
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out_dir.join(format!("{name}.{}.{n}.tmp.o", std::process::id()));
    let source = std::fs::read_to_string(&src).unwrap_or_default();
    let mut cmd = Command::new(&clang);
    if source.contains("#include \"vmlinux.h\"") {
        cmd.arg("-I").arg(vmlinux_h_dir(&out_dir));
    }
    let output = cmd
        .args(["-target", "bpf", "-mcpu=v3", "-O2", "-g", "-D__TARGET_ARCH_x86", "-c"])
        .arg("-I")
        .arg(root.join("examples/bpf"))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .expect("run clang");
    assert!(output.status.success(), "clang failed on {}:\n{}", src.display(), String::from_utf8_lossy(&output.stderr));
    std::fs::rename(&tmp, &out).expect("move object into place");
    out
}

/// A directory holding `vmlinux.h` (every type of the running kernel, as C), for examples
/// written against it as libbpf-tools and bpftime's examples are: made once with bpftool from
/// /sys/kernel/btf/vmlinux.
fn vmlinux_h_dir(out_dir: &Path) -> PathBuf {
    let dir = out_dir.join("include");
    let header = dir.join("vmlinux.h");
    if header.exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("create target/bpf-examples/include");
    let o = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"])
        .output()
        .expect("run bpftool (bash scripts/setup.sh installs it)");
    assert!(o.status.success(), "bpftool btf dump: {}", String::from_utf8_lossy(&o.stderr));
    let tmp = dir.join(format!("vmlinux.h.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &o.stdout).expect("write vmlinux.h");
    std::fs::rename(&tmp, &header).expect("move vmlinux.h into place");
    dir
}

/// Held while a target or loader is built: two tests of one binary asking for the same one at
/// once would both build it, and the second rename would replace the file the first had
/// already started (its `/proc/self/exe` then "(deleted)").
fn build_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_fresh(out: &Path, src: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(out), m(src)), (Some(o), Some(s)) if o >= s)
}

/// Every example name (`examples/bpf/*.bpf.c`).
pub fn example_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(crate::repo_root().join("examples/bpf"))
        .expect("examples/bpf exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            name.strip_suffix(".bpf.c").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Builds `out` from `src` with the command `command(tmp)` makes (which writes `tmp`, moved into
/// place when it succeeds), unless `out` is newer than `src`. `hint` says what a failure needs.
fn build_cached(src: &Path, out: PathBuf, hint: &str, command: impl FnOnce(&Path) -> Command) -> PathBuf {
    let dir = out.parent().expect("an output directory");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let _built = build_lock();
    if is_fresh(&out, src) {
        return out;
    }
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = out.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!("{name}.{}.{n}.tmp", std::process::id()));
    let mut cmd = command(&tmp);
    let output = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?} ({hint}): {e}"));
    assert!(output.status.success(), "building {} failed ({hint}):\n{}", src.display(), String::from_utf8_lossy(&output.stderr));
    std::fs::rename(&tmp, &out).expect("move the build into place");
    out
}

/// Builds `examples/targets/<name>.go` with the Go toolchain (cgo on, so the binary links libc
/// and the agent can be preloaded; cached under target/c-targets) and returns its path.
pub fn build_go_target(name: &str) -> PathBuf {
    let root = crate::repo_root();
    let src = root.join("examples/targets").join(format!("{name}.go"));
    let out = root.join("target/c-targets").join(name);
    build_cached(&src, out, "golang-go is needed: bash scripts/setup.sh", |tmp| {
        let mut cmd = Command::new("go");
        cmd.arg("build").arg("-o").arg(tmp).arg(&src);
        cmd.env("CGO_ENABLED", "1").env("GOCACHE", root.join("target/go-cache")).env("GO111MODULE", "off");
        cmd
    })
}

/// Compiles `examples/targets/<name>.c` with the system C compiler, or `<name>.cc` with its C++
/// compiler (cached under target/c-targets): an executable, or with `shared` a `lib<name>.so`.
pub fn build_target(name: &str, shared: bool) -> PathBuf {
    let root = crate::repo_root();
    let c = root.join("examples/targets").join(format!("{name}.c"));
    let cpp = c.with_extension("cc");
    let (src, compiler) = if cpp.exists() { (cpp, ("CXX", "c++")) } else { (c, ("CC", "cc")) };
    let out = root.join("target/c-targets").join(if shared { format!("lib{name}.so") } else { name.to_string() });
    build_cached(&src, out, "a C compiler is needed", |tmp| {
        let mut cmd = Command::new(std::env::var(compiler.0).unwrap_or_else(|_| compiler.1.into()));
        cmd.args(["-O2", "-g", "-pthread"]);
        if shared {
            cmd.args(["-shared", "-fPIC"]);
        }
        cmd.arg(&src).arg("-o").arg(tmp).arg("-ldl");
        cmd
    })
}

/// Compiles `examples/loaders/<name>.c` against the system's libbpf (cached under
/// target/loaders) and returns the executable's path. Panics with cc's message when it fails.
pub fn build_loader(name: &str) -> PathBuf {
    let root = crate::repo_root();
    let src = root.join("examples/loaders").join(format!("{name}.c"));
    let out = root.join("target/loaders").join(name);
    build_cached(&src, out, "libbpf-dev is needed: bash scripts/setup.sh", |tmp| {
        let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cmd.args(["-O2", "-g"]).arg(&src).arg("-o").arg(tmp).arg("-lbpf");
        cmd
    })
}
