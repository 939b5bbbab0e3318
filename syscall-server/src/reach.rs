//! Probes reach processes that were started without the agent, as the kernel's reach every
//! process: a probe a loader opens for one process (`perf_event_open(..., pid, ...)`:
//! `funclatency -p PID`) loads the agent into that process, and so does a probe for every
//! process (`pid` -1) on a file that a process named on the loader's command line maps
//! (`bpftrace -p PID -e 'uprobe:/usr/bin/app:f ...'`: bpftrace filters the pid in the program),
//! or on a system call (`opensnoop -p PID`, whose program filters the pid).
//! It is loaded once per process, with `bpftime attach PID` (ptrace, `dlopen` in the target; see
//! the CLI's `inject`); the agent then attaches the process's links and follows the link table.
//! Other processes are not entered uninvited: a process is traced by a probe for every process
//! once it runs the agent (`bpftime start`, `bpftime attach`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The processes this loader already gave the agent (or tried to).
#[derive(Default)]
pub struct Reached(Mutex<HashSet<u32>>);

impl Reached {
    /// Makes sure process `pid` runs the agent on region `shm`; says on stderr what it did or
    /// why it could not (the link stays in the region either way, for an agent started later).
    pub fn ensure(&self, pid: u32, shm: &str) {
        // One whose dynamic loader has yet to load the agent its environment preloads (`bpftrace
        // -c CMD` names its command stopped right after the exec) needs nothing now, and is
        // looked at again at the next probe (an image that turns out not to load it, a static
        // one, gets it by `bpftime attach` then).
        if pid == 0 || pid == std::process::id() || (preloads_agent(pid) && loader_pending(pid)) {
            return;
        }
        if !self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid) {
            return;
        }
        if runs_agent(pid) {
            return;
        }
        let Some(cli) = cli_path() else {
            eprintln!("bpftime: process {pid} runs without the agent and the `bpftime` CLI was not found: run `bpftime attach {pid}`");
            return;
        };
        let out = std::process::Command::new(&cli)
            .args(["attach", &pid.to_string()])
            .env("BPFTIME_SHM", shm)
            .env_remove("LD_PRELOAD")
            .env_remove("BPFTIME_CHILD_PRELOAD")
            .env_remove("BPFTIME_CHILD_AUDIT")
            .env_remove("LD_AUDIT")
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                eprintln!("bpftime: process {pid} was started without the agent; loaded it there (bpftime attach {pid})")
            }
            Ok(o) => eprintln!("bpftime: process {pid} runs without the agent and loading it failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => eprintln!("bpftime: process {pid} runs without the agent; {} attach: {e}", cli.display()),
        }
    }
}

/// The processes named on this loader's command line (`-p PID`, `--pid PID`, `--pid=PID`) that
/// map file `path`, or with an empty `path` (a system call event), all of them.
pub fn named_processes_mapping(path: &str) -> Vec<u32> {
    let want = if path.is_empty() {
        None
    } else {
        match std::fs::canonicalize(path) {
            Ok(p) => Some(p),
            Err(_) => return vec![],
        }
    };
    let args: Vec<String> =
        std::fs::read("/proc/self/cmdline").map(|b| b.split(|&c| c == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()).unwrap_or_default();
    let mut named = vec![];
    for (i, a) in args.iter().enumerate() {
        let value = match a.as_str() {
            "-p" | "--pid" => args.get(i + 1).map(String::as_str),
            _ => a.strip_prefix("--pid="),
        };
        if let Some(pid) = value.and_then(|v| v.parse::<u32>().ok()) {
            named.push(pid);
        }
    }
    named.retain(|&pid| pid != std::process::id() && want.as_deref().map_or(std::path::Path::new(&format!("/proc/{pid}")).exists(), |w| maps_file(pid, w)));
    named
}

/// Whether process `pid` maps `file` (its executable or a library).
fn maps_file(pid: u32, file: &Path) -> bool {
    let Some(file) = file.to_str() else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.lines().any(|l| l.split_whitespace().nth(5) == Some(file)))
}

/// Whether process `pid` has the agent mapped.
fn runs_agent(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.lines().any(|l| l.ends_with("/libbpftime.so")))
}

/// Whether process `pid` maps no file but its executable and its dynamic loader: it has not
/// loaded its libraries yet (stopped right after its exec).
fn loader_pending(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
    let files: Vec<&str> = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|f| f.starts_with('/')).collect();
    let is_loader = |f: &str| f.rsplit('/').next().is_some_and(|name| name.starts_with("ld-linux") || name.starts_with("ld64"));
    files.iter().any(|f| is_loader(f)) && files.iter().all(|f| is_loader(f) || std::path::Path::new(f) == exe)
}

/// Whether the environment process `pid`'s image started with preloads the agent (its dynamic
/// loader loads it, or did): an `LD_PRELOAD` path whose file is `libbpftime.so` or
/// `libbpftime_early.so`, as the agent itself tells (`bpftime_attach::syscalls::names_agent`).
fn preloads_agent(pid: u32) -> bool {
    let names_agent = |path: &[u8]| {
        let file = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        file == b"libbpftime.so" || file == b"libbpftime_early.so"
    };
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0).filter_map(|v| v.strip_prefix(b"LD_PRELOAD=")).any(|list| list.split(|&b| b == b':' || b == b' ').any(names_agent))
    })
}

/// The `bpftime` CLI: `$BPFTIME_CLI` (set by `bpftime load`), else beside this library.
fn cli_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BPFTIME_CLI") {
        return Some(PathBuf::from(p));
    }
    let beside = own_path()?.with_file_name("bpftime");
    beside.exists().then_some(beside)
}

/// The file this library was loaded from (the mapping of /proc/self/maps that holds this code).
fn own_path() -> Option<PathBuf> {
    let here = own_path as fn() -> Option<PathBuf> as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let path = fields.nth(4)?;
        (start <= here && here < end && path.starts_with('/')).then(|| Path::new(path).to_path_buf())
    })
}
