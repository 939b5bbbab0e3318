//! Shared test support: locating the conformance vectors and running a program on every engine.

pub mod clang;
pub mod cuda_tools;
pub mod datatest;
pub mod gpu;
pub mod kernel;
pub mod progen;
pub mod rng;

use std::path::PathBuf;

/// Root of the repository.
/// `$BPFTIME_REPO_ROOT` overrides it, for test binaries built on one machine and run on
/// another (`scripts/gpu-check.sh`).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("BPFTIME_REPO_ROOT") {
        return PathBuf::from(r);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Removes a test's region and the code cache beside it, whether or not they exist.
pub fn remove_region(name: &str) {
    let _ = bpftime_shm::ShmRegion::remove(name);
}

/// The conformance folder: `$BPFTIME_CONFORMANCE_DIR`, or `../shared/conformance` beside the
/// repository.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("BPFTIME_CONFORMANCE_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/conformance"))
}

/// One conformance vector.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    pub program: Vec<u8>,
    pub mem: Vec<u8>,
    pub result: u64,
}

/// Reads `vectors.jsonl`; `None` when the folder is absent.
pub fn conformance_vectors() -> Option<Vec<Vector>> {
    let path = conformance_dir().join("vectors.jsonl");
    let text = std::fs::read_to_string(&path).ok()?;
    let vectors = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("vector is JSON");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Vector {
                name: s("name"),
                program: bpftime_vm::conformance::parse_hex_bytes(&s("program")).expect("program hex"),
                mem: bpftime_vm::conformance::parse_hex_bytes(&s("mem")).expect("mem hex"),
                result: bpftime_vm::conformance::parse_result(&s("result")).expect("result"),
            }
        })
        .collect();
    Some(vectors)
}

/// Runs `cmd` to completion like `Command::output`, and says how much CPU time (user + system)
/// it used (`wait4(2)`'s `rusage`: that child's alone, whatever else the machine or this test
/// process runs).
pub fn output_and_cpu_time(cmd: &mut std::process::Command) -> (std::process::Output, std::time::Duration) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = vec![];
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = read(Box::new(child.stdout.take().expect("piped")));
    let err = read(Box::new(child.stderr.take().expect("piped")));
    let (mut status, pid) = (0, child.id() as libc::pid_t);
    // SAFETY: `wait4` only writes the status and `rusage` it is given; `pid` is our child,
    // reaped here once (the `Child` is not waited for again).
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        while libc::wait4(pid, &mut status, 0, &mut u) < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {}
        u
    };
    drop(child);
    let t = |tv: libc::timeval| std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    let output =
        std::process::Output { status: std::process::ExitStatus::from_raw(status), stdout: out.join().expect("reader"), stderr: err.join().expect("reader") };
    (output, t(usage.ru_utime) + t(usage.ru_stime))
}

/// Waits (up to 10 s) until process `pid` blocks in a read(2) of its standard input (its
/// libraries loaded, its main code running); panics if it never does.
pub fn wait_reading_stdin(pid: u32) {
    let mut call = String::new();
    // Polled often: a process that a timer wakes every few hundred microseconds (or that waits
    // for a loaded machine's CPU) shows "running" between its reads.
    for _ in 0..10_000 {
        // `/proc/PID/syscall`: the call's number and arguments while it blocks in one.
        call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if call.starts_with("0 0x0 ") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The state letter (`Z`: it died) and the last call seen, for the failure's message.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map_or("gone", |(_, rest)| &rest[..1]);
    panic!("process {pid} never read its standard input (state {state}, last call {:?})", call.trim());
}
