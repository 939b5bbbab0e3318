//! The CUDA toolchain pieces the tests use without a GPU: `ptxas` and `nvcc` from the
//! pip wheel `nvidia-cuda-nvcc`, which `scripts/setup.sh` installs into /opt/bpftime-cuda.

use std::path::PathBuf;

/// Where setup installs the wheel.
pub const CUDA_PREFIX: &str = "/opt/bpftime-cuda";

/// A CUDA tool: `$PTXAS`-style override (`$<TOOL>` upper-cased), then PATH, then the wheel.
pub fn tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(name.to_uppercase()) {
        return Some(PathBuf::from(p));
    }
    if std::process::Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(PathBuf::from(name));
    }
    let nvidia = PathBuf::from(CUDA_PREFIX).join("nvidia");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia).ok()?.flatten().map(|e| e.path().join("bin").join(name)).filter(|p| p.exists()).collect();
    dirs.sort();
    dirs.pop()
}

/// `ptxas`, or why there is none. With `BPFTIME_REQUIRE_CUDA_TOOLS=1` (the README's test
/// command sets it) a missing tool is a failure, not a skip.
pub fn ptxas_or_skip(what: &str) -> Option<PathBuf> {
    tool_or_skip("ptxas", what)
}

/// CUDA tool `name` (`nvcc`, `ptxas`), or why there is none: a skip with a printed reason, or a
/// failure with `BPFTIME_REQUIRE_CUDA_TOOLS=1`.
pub fn tool_or_skip(name: &str, what: &str) -> Option<PathBuf> {
    match tool(name) {
        Some(p) => Some(p),
        None if std::env::var_os("BPFTIME_REQUIRE_CUDA_TOOLS").is_some() => {
            panic!("{what}: {name} not found (install the pip wheel nvidia-cuda-nvcc: bash scripts/setup.sh)")
        }
        None => {
            println!("skipping {what}: {name} not found (bash scripts/setup.sh installs it)");
            None
        }
    }
}

/// Assembles `ptx` for `sm` with ptxas; the error text when it refuses.
pub fn ptxas_accepts(ptxas: &std::path::Path, ptx: &str, sm: u32, scratch: &std::path::Path) -> Result<(), String> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = scratch.join(format!("m{n}.ptx"));
    let out = scratch.join(format!("m{n}.cubin"));
    std::fs::write(&src, ptx).map_err(|e| e.to_string())?;
    let o = std::process::Command::new(ptxas).arg(format!("-arch=sm_{sm}")).arg(&src).arg("-o").arg(&out).output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&out);
    if o.status.success() {
        let _ = std::fs::remove_file(&src);
        Ok(())
    } else {
        Err(format!("ptxas sm_{sm} ({}): {}", src.display(), String::from_utf8_lossy(&o.stderr)))
    }
}
