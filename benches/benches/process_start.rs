//! What the agent costs a process that starts and ends: `ls /` (fork, exec, its system calls,
//! exit, wait) untraced, under the agent with a region that has no links, and under the agent
//! with raw sys_enter/sys_exit programs linked for every process (every system call of the
//! process is then seen: the first call at each site arrives as a signal, and the site is
//! rewritten into a jump).
//!
//! Needs the workspace built in this profile (`libbpftime.so`); says why it skips otherwise.

use bpftime_object::Object;
use bpftime_runtime::links::{self, LinkScope};
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use criterion::{criterion_group, criterion_main, Criterion};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/syscall_bench.bpf.o"));
const UPROBES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uprobe_bench.bpf.o"));

/// Where the libraries of this build profile are.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/PROFILE/deps").to_path_buf()
}

/// Runs `ls /` once, under the agent with region `shm` when one is named.
fn ls(agent: &Path, shm: Option<&str>) {
    let mut c = Command::new("ls");
    c.arg("/").stdout(Stdio::null());
    if let Some(shm) = shm {
        c.env("LD_PRELOAD", agent).env("BPFTIME_SHM", shm);
    }
    assert!(c.status().expect("run ls").success());
}

fn bench(c: &mut Criterion) {
    let agent = profile_dir().join("libbpftime.so");
    if !agent.exists() {
        println!("skipping the process start benchmarks: build the workspace in this profile first ({} missing)", agent.display());
        return;
    }
    let shm = format!("bpftime-bench-start-{}", std::process::id());
    let _ = ShmRegion::remove(&shm);
    let region = Arc::new(ShmRegion::create(&shm, 64 << 20).expect("region"));
    let mut g = c.benchmark_group("process_start");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(3));
    g.bench_function("ls_untraced", |b| b.iter(|| ls(&agent, None)));
    g.bench_function("ls_agent_no_links", |b| b.iter(|| ls(&agent, Some(&shm))));
    let rt = Runtime::new(region.clone(), EngineKind::Jit);
    // An empty uprobe on a libc function `ls` does not call: attaching it scans libc's code
    // (which vector registers its functions name), or reads what an earlier process learnt.
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"].into_iter().find(|p| Path::new(p).exists());
    if let Some(libc) = libc {
        let loaded = rt.load_object(&Object::parse(UPROBES).expect("object")).expect("loads");
        let id = loaded.programs.iter().find(|p| p.0 == "empty").expect("program").2;
        let link = links::store(&region, "empty", id, &format!("{libc}:getaddrinfo"), false, 0).expect("link");
        g.bench_function("ls_agent_libc_uprobe", |b| b.iter(|| ls(&agent, Some(&shm))));
        region.remove_object(link);
    }
    let loaded = rt.load_object(&Object::parse(OBJECT).expect("object")).expect("loads");
    for (name, event) in [("count_enter", "raw/sys_enter"), ("count_exit", "raw/sys_exit")] {
        let id = loaded.programs.iter().find(|p| p.0 == name).expect("program").2;
        links::store_syscall(&region, name, id, event, LinkScope::default()).expect("link");
    }
    g.bench_function("ls_agent_every_syscall_traced", |b| b.iter(|| ls(&agent, Some(&shm))));
    g.finish();
    let _ = ShmRegion::remove(&shm);
}

criterion_group!(benches, bench);
criterion_main!(benches);
