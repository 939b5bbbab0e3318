//! An unmodified libbpf loader (examples/loaders/ring_lines.c) against a busy target whose
//! next_line() a uretprobe sends to a ring buffer, ours (the loader under the syscall server,
//! the target under the agent) next to the kernel's (as root): the time from the loader's start
//! to its first event, and to its 20,000th (events per second from the difference).
//!
//! Needs the workspace built in this profile (`libbpftime.so`, `libbpftime_syscall_server.so`)
//! and libbpf-dev; says why it skips otherwise.

use bpftime_tests::clang::{build_example, build_loader, build_target};
use criterion::{criterion_group, criterion_main, Criterion};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the libraries of this build profile are.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/PROFILE/deps").to_path_buf()
}

struct Setup {
    agent: PathBuf,
    server: PathBuf,
    loader: PathBuf,
    object: PathBuf,
    target: PathBuf,
}

/// A busy target: next_line() in a loop, under the agent when `ours` names a region.
fn start_target(s: &Setup, ours: Option<&str>) -> Child {
    let mut c = Command::new(&s.target);
    c.arg("2000000000").stdout(Stdio::null());
    if let Some(shm) = ours {
        // The agent finds the loader's link within a millisecond of its making.
        c.env("LD_PRELOAD", &s.agent).env("BPFTIME_SHM", shm).env("BPFTIME_LINK_POLL_MS", "1");
    }
    let child = c.spawn().expect("start the target");
    std::thread::sleep(Duration::from_millis(50));
    child
}

/// How long the loader takes from its start until it got `count` events.
fn loader_run(s: &Setup, ours: Option<&str>, count: u32) -> Duration {
    let mut target = start_target(s, ours);
    let mut c = Command::new(&s.loader);
    c.arg(&s.object).arg(&s.target).arg(count.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(shm) = ours {
        // As `bpftime load` runs it: the server, and the agent beside it.
        let preload = format!("{}:{}", s.server.display(), s.agent.display());
        c.env("LD_PRELOAD", preload).env("BPFTIME_SHM", shm);
    }
    let start = Instant::now();
    let status = c.status().expect("run the loader");
    let took = start.elapsed();
    let _ = target.kill();
    let _ = target.wait();
    assert!(status.success(), "the loader did not get its {count} events");
    took
}

fn bench(c: &mut Criterion) {
    let dir = profile_dir();
    let (agent, server) = (dir.join("libbpftime.so"), dir.join("libbpftime_syscall_server.so"));
    if !agent.exists() || !server.exists() {
        println!("skipping the loader benchmarks: build the workspace in this profile first ({} missing)", dir.display());
        return;
    }
    let s = Setup { agent, server, loader: build_loader("ring_lines"), object: build_example("loader_lines"), target: build_target("lines", false) };
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut g = c.benchmark_group("loader");
    g.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(3));
    for count in [1u32, 20_000] {
        let name = if count == 1 { "first_event" } else { "20000_events" };
        g.bench_function(format!("bpftime_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let shm = format!("bpftime-bench-loader-{}-{i}", std::process::id());
                    let _ = bpftime_shm::ShmRegion::remove(&shm);
                    let _ = bpftime_shm::ShmRegion::create(&shm, 64 << 20).expect("region");
                    total += loader_run(&s, Some(&shm), count);
                    let _ = bpftime_shm::ShmRegion::remove(&shm);
                }
                total
            })
        });
        if root {
            g.bench_function(format!("kernel_{name}"), |b| b.iter_custom(|iters| (0..iters).map(|_| loader_run(&s, None, count)).sum()));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
