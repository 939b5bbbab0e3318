//! Unmodified libbpf loaders under the syscall server (`bpftime load -- LOADER`), their targets
//! under the agent (`bpftime start`), compared with the same loader on the kernel: we match
//! the kernel, not ourselves.

use bpftime_tests::clang::{build_example, build_loader, build_target};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One test at a time: the kernel's uprobes (the comparisons) see every process running the
/// shared target binaries, and so would count another test's calls.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tool from apt, or why it is missing: a skip with the reason, or a failure under the
/// README's test command (`BPFTIME_REQUIRE_TOOLS=1`; setup installs them).
fn installed_or_skip(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if !path.is_empty() && p.exists() {
        return Some(p);
    }
    assert!(std::env::var_os("BPFTIME_REQUIRE_TOOLS").is_none(), "{package} is missing (bash scripts/setup.sh installs it)");
    println!("skipping: {package} is not installed");
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `loader` (a command line), waits for its "attached" line, runs `target`, tells the
/// loader to go on and returns its output (after the "attached" line).
fn session(mut loader: Command, target: &mut Command) -> (String, String) {
    let mut child = loader.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    if !first.starts_with("attached") {
        let o = child.wait_with_output().unwrap();
        panic!("the loader did not attach: {first}{}", text(&o.stderr));
    }
    let t = target.output().unwrap();
    assert!(t.status.success(), "target: {}", text(&t.stderr));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "loader: {rest}{}", text(&o.stderr));
    (first + &rest, text(&t.stdout))
}

fn bpftime(shm: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime"));
    c.args(["--shm", shm]);
    c
}

#[test]
fn a_libbpf_loader_counts_what_the_kernel_counts() {
    let _serial = serial();
    counts_like_the_kernel(&build_loader("count_calls"), "libbpf");
}

/// The same loader written with aya (0.13.1, examples/aya-loader), unmodified.
#[test]
fn an_aya_loader_counts_what_the_kernel_counts() {
    let _serial = serial();
    let root = bpftime_tests::repo_root();
    let target_dir = root.join("target/aya-loader");
    let o = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(root.join("examples/aya-loader/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "building the aya loader: {}", text(&o.stderr));
    counts_like_the_kernel(&target_dir.join("debug/count-calls-aya"), "aya");
}

/// `loader` (count_calls's interface) under the server and the target under the agent print
/// what the loader prints on the kernel.
fn counts_like_the_kernel(loader: &Path, tag: &str) {
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let iters = "5000";
    let shm = format!("bpftime-loader-{tag}-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(loader).arg(&obj).arg(&calls);
    let mut target = bpftime(&shm);
    target.args(["start", "--"]).arg(&calls).arg(iters);
    let (theirs_out, target_out) = session(ours, &mut target);
    assert!(theirs_out.contains(&format!("stats[0] = {iters}\n")), "every add() counted:\n{theirs_out}");
    // The loader's exit detached its links and dropped its programs and maps, as the kernel
    // drops them with their last reference.
    let list = |what: &str| text(&bpftime(&shm).args([what, "list"]).output().unwrap().stdout);
    assert_eq!((list("prog"), list("map")), (String::new(), String::new()), "nothing left behind");
    bpftime_tests::remove_region(&shm);
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let mut kernel = Command::new(loader);
    kernel.arg(&obj).arg(&calls);
    let (kernel_out, kernel_target) = session(kernel, Command::new(&calls).arg(iters));
    assert_eq!(theirs_out, kernel_out, "the same loader on the kernel");
    assert_eq!(target_out, kernel_target, "the target's own output");
}

/// A uprobe opened for pid 0 is the loader's own (libbpf's "self"), as in the kernel: a target
/// started under the agent counts nothing.
#[test]
fn a_uprobe_for_pid_0_is_the_loaders_own_as_on_the_kernel() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-pid0-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls).env("COUNT_CALLS_PID", "0");
    let mut target = bpftime(&shm);
    target.args(["start", "--"]).arg(&calls).arg("500");
    let (ours_out, _) = session(ours, &mut target);
    bpftime_tests::remove_region(&shm);
    assert!(ours_out.contains("stats[0] = 0\n"), "no call of another process counted:\n{ours_out}");
    if is_root() {
        let mut kernel = Command::new(&loader);
        kernel.arg(&obj).arg(&calls).env("COUNT_CALLS_PID", "0");
        let (kernel_out, _) = session(kernel, Command::new(&calls).arg("500"));
        assert_eq!(ours_out, kernel_out, "the same loader on the kernel");
    }
}

/// A loader that probes itself, as libbpf's own examples do (a uprobe and a uretprobe for pid 0
/// on a function of `/proc/self/exe`, one named in its section for every process, a write(2)
/// tracepoint whose program tests for the loader's pid): the kernel runs them in the loader,
/// and so do we (`bpftime load` preloads the agent beside the server). Before, nothing fired.
/// A child it forks keeps the probe for every process, not those for the loader's pid.
#[test]
fn a_loader_that_probes_itself_counts_what_the_kernel_counts() {
    let _serial = serial();
    let loader = build_loader("self_probe");
    let obj = build_example("self_probe");
    let shm = format!("bpftime-self-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let ours = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg("1000").output().unwrap();
    bpftime_tests::remove_region(&shm);
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    // The child's 100 calls count for the probe on every process only.
    let want = "stats[0] = 1000\nstats[1] = 1498500\nstats[2] = 1000\nstats[3] = 1100\nstats[4] = 1503450\nsum 2497500\n";
    assert_eq!(text(&ours.stdout), want, "{}", text(&ours.stderr));
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let kernel = Command::new(&loader).arg(&obj).arg("1000").output().unwrap();
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    assert_eq!(text(&kernel.stdout), want, "the same loader on the kernel");
}

/// An attach is in force when the loader's call returns, as on the kernel: a process already
/// running under the agent (blocked before its calls) is told to go the moment count_calls says
/// "attached", and every call is counted (before, the agent's link follower took the new links
/// in on its own time, and calls made meanwhile were missed).
#[test]
fn an_attach_is_in_force_in_running_processes_when_the_loader_goes_on_as_on_the_kernel() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-in-force-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let run = |target: &mut Command, pid_of: &dyn Fn(u32) -> i32, mut loader: Command| -> (String, String) {
        let mut t = target.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        bpftime_tests::wait_reading_stdin(pid_of(t.id()) as u32);
        let mut l = loader.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(l.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with("attached"), "the loader did not attach: {first}");
        t.stdin.take().unwrap().write_all(b"g").unwrap();
        let t = t.wait_with_output().unwrap();
        assert!(t.status.success(), "target: {}", text(&t.stderr));
        l.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let o = l.wait_with_output().unwrap();
        assert!(o.status.success(), "loader: {rest}{}", text(&o.stderr));
        (first + &rest, text(&t.stdout))
    };
    // A region first, as for a process started before any loader runs.
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls);
    let (ours_out, ours_target) = run(bpftime(&shm).args(["start", "--"]).arg(&calls).args(["2000", "1", "wait"]), &|cli| child_of(cli), ours);
    assert_eq!(count_calls_stats(&ours_out, 3), [2000, 3 * 1999 * 2000 / 2, 10], "{ours_out}");
    bpftime_tests::remove_region(&shm);
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&calls);
    let (kernel_out, kernel_target) = run(Command::new(&calls).args(["2000", "1", "wait"]), &|pid| pid as i32, kernel);
    assert_eq!(ours_out, kernel_out, "the same loader on the kernel");
    assert_eq!(ours_target, kernel_target, "the target's own output");
}

/// A process running the agent that cannot take a new link in (stopped) holds a loader's
/// attach up for three seconds once, is named, and is not waited for again.
#[test]
fn a_stopped_process_holds_an_attach_up_once_and_is_named() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-stopped-runner-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut t = bpftime(&shm).args(["start", "--"]).arg(&calls).args(["300", "1", "wait"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child_of(t.id());
    bpftime_tests::wait_reading_stdin(pid as u32);
    // SAFETY: kill(2) on the process we started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let mut l = bpftime(&shm)
        .args(["load", "--"])
        .arg(&loader)
        .arg(&obj)
        .arg(&calls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(l.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let took = started.elapsed();
    assert!(first.starts_with("attached 3"), "{first}");
    // Three links, one wait (the attach path itself takes well under a second here).
    assert!(took >= std::time::Duration::from_secs(3) && took < std::time::Duration::from_secs(10), "{took:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    l.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let o = l.wait_with_output().unwrap();
    let said = text(&o.stderr);
    assert_eq!(said.matches(&format!("process {pid} runs the agent but did not take a new link in")).count(), 1, "{said}");
    t.stdin.take().unwrap().write_all(b"g").unwrap();
    assert!(t.wait().unwrap().success());
    bpftime_tests::remove_region(&shm);
}

/// The kernel's jiffies (`/proc/timer_list`, root only).
fn kernel_jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    text.lines().find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok())
}

/// The first `n` slots of the `stats` map count_calls printed (`stats[K] = V`), 0 where absent.
fn count_calls_stats(out: &str, n: usize) -> Vec<u64> {
    let mut v = vec![0u64; n];
    for l in out.lines() {
        if let Some((k, val)) = l.strip_prefix("stats[").and_then(|l| l.split_once("] = ")) {
            if let (Ok(k), Ok(val)) = (k.parse::<usize>(), val.trim().parse()) {
                if k < n {
                    v[k] = val;
                }
            }
        }
    }
    v
}

/// `bpf_get_current_task_btf()` dereferenced directly (`t->tgid`, `t->real_parent->tgid`,
/// `t->nsproxy->mnt_ns->ns.inum`; and four generations up, past the stand-in's NULL, where
/// the load reads 0 and the run goes on, as the kernel's fault-tolerant loads: before, the run
/// ended there), as programs built against vmlinux.h do, under an unmodified
/// libbpf loader (which relocates the field offsets against the kernel's BTF): what the kernel
/// reads.
#[test]
fn a_task_read_through_its_btf_pointer_holds_what_the_kernel_holds() {
    use std::os::unix::fs::MetadataExt;
    let _serial = serial();
    let obj = build_example("task_btf");
    let calls = build_target("calls", false);
    let loader = build_loader("count_calls");
    let stats = |out: &str| count_calls_stats(out, 10);
    // Calls, then (the worker thread's) tgid and pid, the parent's tgid, whether the ids are
    // bpf_get_current_pid_tgid's, the name, the mount namespace, the command line's length
    // (`calls 100`: the path, "100", their NULs) and argv[0]'s first bytes.
    let args_len = calls.as_os_str().len() as u64 + 1 + 4;
    let argv0 = u64::from_le_bytes(calls.as_os_str().as_encoded_bytes()[..8].try_into().unwrap());
    let check = |v: &[u64], parent: u64, who: &str| {
        assert_eq!(v[0], 100, "{who}: calls");
        assert!(v[1] != 0 && v[2] != 0 && v[1] != v[2], "{who}: tgid {} and pid {} of a worker thread", v[1], v[2]);
        assert_eq!(v[3], parent, "{who}: the parent's tgid");
        assert_eq!(v[4], 1, "{who}: the task's ids are bpf_get_current_pid_tgid's");
        assert_eq!(v[5].to_le_bytes(), *b"calls\0\0\0", "{who}: comm");
        assert_eq!(v[6], std::fs::metadata("/proc/self/ns/mnt").unwrap().ino(), "{who}: mount namespace");
        assert_eq!((v[7], v[8]), (args_len, argv0), "{who}: the command line's length and start, through the mm");
        assert_eq!(v[9], 1, "{who}: the run went on past a load through a NULL it met on the way up");
    };
    let shm = format!("bpftime-task-btf-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let waiting = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
    // `bpftime start` runs the target as its child.
    let start = bpftime(&shm).args(["start", "--"]).arg(&calls).arg("100").stdout(Stdio::null()).spawn().unwrap();
    let parent = start.id() as u64;
    assert!(start.wait_with_output().unwrap().status.success());
    let out = loader_finished(waiting);
    bpftime_tests::remove_region(&shm);
    check(&stats(&out), parent, "ours");
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&calls);
    let (kernel_out, _) = session(kernel, Command::new(&calls).arg("100"));
    check(&stats(&kernel_out), std::process::id() as u64, "the kernel");
}

/// Open-coded loops over the kernel's numeric iterator kfuncs (`bpf_iter_num_*`, what libbpf's
/// `bpf_for()` expands to) inside an RCU read section, under an unmodified libbpf loader (which
/// resolves the kfuncs to their BTF ids in the kernel's BTF) and from `bpftime run` (by name):
/// what the kernel counts, the iterator's errors included.
#[test]
fn kfunc_loops_count_what_the_kernel_counts() {
    let _serial = serial();
    let obj = build_example("kfunc_loops");
    let calls = build_target("calls", false);
    let loader = build_loader("count_calls");
    // add(a, ..) for a in 0..300: a % 10 numbers each.
    let sum: u64 = (0..300u64).map(|a| (0..a % 10).sum::<u64>()).sum();
    let iterations: u64 = (0..300u64).map(|a| a % 10).sum();
    let expected = vec![300, sum, iterations, 0, 300, 300, 900];
    let shm = format!("bpftime-kfunc-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls);
    let (out, _) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&calls).arg("300"));
    bpftime_tests::remove_region(&shm);
    assert_eq!(count_calls_stats(&out, 7), expected, "ours, under libbpf:\n{out}");
    let attach = format!("on_add={}:add", calls.display());
    let o = bpftime(&shm).arg("run").arg(&obj).args(["--attach", &attach, "--json", "--"]).arg(&calls).arg("300").output().unwrap();
    bpftime_tests::remove_region(&shm);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The dump follows the target's output, on stderr.
    let json = text(&o.stderr).lines().find(|l| l.starts_with('{')).map(str::to_string).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&json).expect("bpftime run's JSON");
    let stats = v["maps"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "stats")).cloned().unwrap_or_default();
    let got: Vec<u64> = (0..7).map(|k| stats["entries"].as_array().and_then(|e| e.get(k)).and_then(|e| e["value"]["u64"].as_u64()).unwrap_or(0)).collect();
    assert_eq!(got, expected, "ours, from bpftime run:\n{}{}", text(&o.stdout), text(&o.stderr));
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&calls);
    let (kernel_out, _) = session(kernel, Command::new(&calls).arg("300"));
    assert_eq!(count_calls_stats(&kernel_out, 7), expected, "the kernel's:\n{kernel_out}");
}

/// A `uprobe_multi` link (`BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI`, what libbpf 1.3+
/// makes of `uprobe.multi` sections) from a loader speaking bpf(2) itself: entry and return
/// probes on every offset it names, each with its cookie, counted as the kernel counts them.
#[test]
fn uprobe_multi_links_count_what_the_kernel_counts() {
    let _serial = serial();
    let loader = build_loader("uprobe_multi_counts");
    let calls = build_target("calls", false);
    // add() and fact() by their file offsets (the text segment's addresses are its offsets).
    let nm = Command::new("nm").arg(&calls).output().unwrap();
    let offset = |f: &str| text(&nm.stdout).lines().find(|l| l.ends_with(&format!(" {f}"))).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
    let (add, fact) = (offset("add"), offset("fact"));
    // add() 300 times with cookie 1, fact() 10 times with cookie 2; each returns as often.
    let expected = vec![310, 310, 320, 320];
    let shm = format!("bpftime-multi-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&calls).args([&add, &fact]);
    let (out, _) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&calls).arg("300"));
    bpftime_tests::remove_region(&shm);
    assert_eq!(count_calls_stats(&out, 4), expected, "ours:\n{out}");
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    // uprobe_multi links came with Linux 6.6.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version: Vec<u32> = release.split(['.', '-']).take(2).filter_map(|v| v.trim().parse().ok()).collect();
    if version < vec![6, 6] {
        return println!("skipping the kernel comparison: Linux {} has no uprobe_multi links", release.trim());
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&calls).args([&add, &fact]);
    let (kernel_out, _) = session(kernel, Command::new(&calls).arg("300"));
    assert_eq!(count_calls_stats(&kernel_out, 4), expected, "the kernel's:\n{kernel_out}");
}

/// Two cgroups v2, one inside the other (removed on drop), where the hierarchy is mounted
/// and writable (root).
struct NestedCgroup {
    outer: PathBuf,
    inner: PathBuf,
    /// Their ids (inode numbers), outer first.
    ids: [u64; 2],
}

impl NestedCgroup {
    fn make() -> Option<NestedCgroup> {
        use std::os::unix::fs::MetadataExt;
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = info.lines().find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            after.starts_with("cgroup2 ").then(|| before.split(' ').nth(4).map(PathBuf::from))?
        })?;
        let outer = mount.join(format!("bpftime-test-{}", std::process::id()));
        let inner = outer.join("inner");
        let made = std::fs::create_dir_all(&inner);
        let g = NestedCgroup { ids: [0, 0], outer, inner };
        if let Err(e) = made {
            println!("running in the current cgroup: cannot make one in {}: {e}", mount.display());
            return None;
        }
        let mut g = g;
        g.ids = [std::fs::metadata(&g.outer).ok()?.ino(), std::fs::metadata(&g.inner).ok()?.ino()];
        Some(g)
    }
}

impl Drop for NestedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.inner);
        let _ = std::fs::remove_dir(&self.outer);
    }
}

/// What `map_walks.bpf.c` leaves in `stats[0..7]` after add(a, ..) for a in 0..iters: the
/// hash and array walks played out on a model of the two maps.
fn map_walks_model(iters: u64) -> Vec<u64> {
    let mut by_arg = std::collections::BTreeMap::<u64, u64>::new();
    let mut slots = [0u64; 16];
    let mut r = vec![0u64; 7];
    for a in 0..iters {
        *by_arg.entry(a % 32).or_insert(0) += 1;
        slots[(a % 16) as usize] += a;
        r[0] = by_arg.len() as u64;
        for (k, v) in by_arg.iter_mut() {
            r[1] += k;
            r[2] += *v;
            *v += 1;
        }
        let before = by_arg.len();
        by_arg.retain(|_, v| *v <= 40);
        r[3] += (before - by_arg.len()) as u64;
        r[4] = 5;
        r[5] += (0..5).sum::<u64>();
        r[6] += slots[..5].iter().sum::<u64>();
    }
    r
}

/// `bpf_for_each_map_elem` (a hash walk that writes values and deletes elements, an array walk
/// stopped early), `bpf_jiffies64`, `bpf_get_current_ancestor_cgroup_id` and
/// `bpf_ktime_get_tai_ns`, in a program an unmodified libbpf loader loads: what the kernel
/// gives.
#[test]
fn map_walks_jiffies_and_cgroup_ancestors_match_the_kernel() {
    let _serial = serial();
    let obj = build_example("map_walks");
    let calls = build_target("calls", false);
    let loader = build_loader("count_calls");
    let iters = 2000;
    let stats = |out: &str| count_calls_stats(out, 17);
    // Jiffies at the first and the last call lie between the kernel's before and after the
    // run (give or take the tick in which ours were calibrated).
    let jiffies_within = |v: &[u64], before: Option<u64>, after: Option<u64>, who: &str| {
        assert!(v[7] != 0 && v[7] <= v[8], "{who}: jiffies {} then {}", v[7], v[8]);
        if let (Some(b), Some(a)) = (before, after) {
            assert!(b <= v[7] + 1 && v[8] <= a, "{who}: jiffies {}..{} outside the kernel's {b}..{a}", v[7], v[8]);
        }
    };
    let model = map_walks_model(iters);
    // The targets run two cgroups below the root where one can be made, so that the ancestors'
    // ids mean something.
    let cgroup = NestedCgroup::make();
    let in_cgroup = |cmd: &mut Command| -> Command {
        let Some(g) = &cgroup else { return std::mem::replace(cmd, Command::new("true")) };
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec \"$@\"", g.inner.display())).arg("sh");
        c.arg(cmd.get_program()).args(cmd.get_args());
        c
    };
    let shm = format!("bpftime-walks-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls);
    let mut target = in_cgroup(bpftime(&shm).args(["start", "--"]).arg(&calls).arg(iters.to_string()));
    let before = kernel_jiffies();
    let (out, _) = session(ours, &mut target);
    let after = kernel_jiffies();
    bpftime_tests::remove_region(&shm);
    let ours = stats(&out);
    assert_eq!(ours[..7], model[..], "hash walks (seen, keys, values, deleted), array walks (seen, keys, values):\n{out}");
    jiffies_within(&ours, before, after, "ours");
    assert_eq!(ours[10], 1, "the root cgroup's id");
    if let Some(g) = &cgroup {
        assert_eq!(ours[11..14], [g.ids[0], g.ids[1], 0], "the ids of the cgroups at levels 1, 2 and 3");
        assert_eq!(ours[16], g.ids[1], "the id of the target's cgroup");
    }
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&calls);
    let before = kernel_jiffies();
    let (kernel_out, _) = session(kernel, &mut in_cgroup(Command::new(&calls).arg(iters.to_string())));
    let after = kernel_jiffies();
    let theirs = stats(&kernel_out);
    assert_eq!(theirs[..7], model[..], "the kernel's walks:\n{kernel_out}");
    jiffies_within(&theirs, before, after, "the kernel");
    assert_eq!(ours[10..], theirs[10..], "cgroup ids of the ancestors at levels 0 to 5, and of the target's cgroup");
    let tai = |v: &[u64]| v[9] as i64;
    assert!((tai(&ours) - tai(&theirs)).abs() < 5_000_000, "TAI minus monotonic: ours {} ns, the kernel's {} ns", tai(&ours), tai(&theirs));
}

/// bpftime's userspace-to-kernel tail call: a loader loads a raw tracepoint program into the
/// kernel itself and stores its fd in a prog array of ours; the uprobe's tail call runs it in
/// the kernel (BPF_PROG_TEST_RUN), once per call, and does not return.
#[test]
fn a_uprobe_tail_calls_a_program_of_the_kernel() {
    let _serial = serial();
    if !is_root() {
        println!("skipping: loading a kernel program needs root");
        return;
    }
    let calls = build_target("calls", false);
    let shm = format!("bpftime-loader-ktail-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut loader = bpftime(&shm);
    loader.args(["load", "--"]).arg(build_loader("kernel_tail_call")).arg(build_example("kernel_tail_call")).arg(&calls);
    let mut target = bpftime(&shm);
    target.args(["start", "--"]).arg(&calls).arg("3000");
    let (out, _) = session(loader, &mut target);
    bpftime_tests::remove_region(&shm);
    assert!(out.contains("stats[0] = 3000\n"), "every add() ran the uprobe:\n{out}");
    assert!(out.contains("stats[1] = 0\n"), "no tail call failed (or returned):\n{out}");
    assert!(out.contains("kernel runs = 3000\n"), "the kernel ran its program once per call:\n{out}");
}

/// CO-RE relocations of every kind (`examples/bpf/core_relocs.bpf.c`: field offsets, sizes,
/// existence and signedness, bitfield shifts through an anonymous struct, type existence,
/// sizes and ids, enumerator values, a load widened to the kernel's field size, a read of a
/// missing field behind its existence check) give the values libbpf gives on the kernel,
/// both where bpftime relocates them (`bpftime run`) and where libbpf does under the syscall
/// server (whose verifier must then find libbpf's poisoned read dead).
#[test]
fn core_relocations_resolve_as_libbpf_resolves_them() {
    let _serial = serial();
    let obj = build_example("core_relocs");
    let calls = build_target("calls", false);
    let loader = build_loader("count_calls");
    // Slot 20 is the stack pointer at the probe (it differs between runs): only whether its
    // upper half survived (the 4-byte load widened to the field's 8) is compared.
    let slots = |pairs: Vec<(u32, u64)>| -> Vec<String> {
        (0..24u32)
            .map(|k| {
                let v = pairs.iter().find(|p| p.0 == k).map_or(0, |p| p.1);
                if k == 20 {
                    format!("{k}: upper half set {}", v >> 32 != 0)
                } else {
                    format!("{k}: {v}")
                }
            })
            .collect()
    };
    // `bpftime run`'s map dump: `  K => V` (zero values left out).
    let run_slots = |out: &str| {
        slots(
            out.lines()
                .filter_map(|l| {
                    let (k, v) = l.trim().split_once(" => ")?;
                    Some((k.parse().ok()?, v.parse().ok()?))
                })
                .collect(),
        )
    };
    // count_calls: `stats[K] = V`.
    let loader_slots = |out: &str| {
        slots(
            out.lines()
                .filter_map(|l| {
                    let (k, v) = l.strip_prefix("stats[")?.split_once("] = ")?;
                    Some((k.parse().ok()?, v.trim().parse().ok()?))
                })
                .collect(),
        )
    };
    let shm = format!("bpftime-core-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let o = bpftime(&shm)
        .arg("run")
        .arg(&obj)
        .arg("--attach")
        .arg(format!("core_relocs={}:fact", calls.display()))
        .arg("--")
        .arg(&calls)
        .args(["0", "1"])
        .output()
        .unwrap();
    let run_out = text(&o.stderr);
    assert!(o.status.success(), "{run_out}");
    let relocated_here = run_slots(&run_out);
    assert_eq!(relocated_here[19], "19: 77", "the missing field's read is never reached:\n{run_out}");
    assert_eq!(relocated_here[20], "20: upper half set true", "{run_out}");
    bpftime_tests::remove_region(&shm);
    let mut server = bpftime(&shm);
    server.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls);
    let (server_out, _) = session(server, bpftime(&shm).args(["start", "--"]).arg(&calls).args(["0", "1"]));
    assert_eq!(relocated_here, loader_slots(&server_out), "relocated by libbpf, run by bpftime:\n{server_out}");
    bpftime_tests::remove_region(&shm);
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&calls);
    let (kernel_out, _) = session(kernel, Command::new(&calls).args(["0", "1"]));
    assert_eq!(relocated_here, loader_slots(&kernel_out), "the kernel's:\n{kernel_out}");
}

/// Pinned links outlive their loader, as on the kernel: a libbpf loader attaches and pins its
/// links and map, then exits; a target started afterwards is counted; another process opens
/// the pinned map (the loader again, and bpftool); unpinning the links (libbpf's
/// `bpf_link__unpin`) detaches them. Every printed count equals the kernel's.
#[test]
fn pinned_links_outlive_their_loader_like_the_kernel() {
    let _serial = serial();
    if !is_root() || !bpftime_tests::kernel::bpffs_mounted() {
        println!("skipping: pins need root and a bpffs");
        return;
    }
    let loader = build_loader("pin_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let run = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };
    // `preload`: the same command under the server (region `shm`) or as it is (the kernel).
    let sequence = |shm: Option<&str>, dir: &str| -> Vec<String> {
        let cmd = |args: &[&std::ffi::OsStr]| {
            let mut c = match shm {
                Some(shm) => {
                    let mut c = bpftime(shm);
                    c.args(["load", "--"]).arg(args[0]);
                    c
                }
                None => Command::new(args[0]),
            };
            c.args(&args[1..]);
            c
        };
        let target = |n: &str| match shm {
            Some(shm) => {
                let mut c = bpftime(shm);
                c.args(["start", "--"]).arg(&calls).arg(n);
                c
            }
            None => {
                let mut c = Command::new(&calls);
                c.arg(n);
                c
            }
        };
        let mut out = vec![run(&mut cmd(&[loader.as_os_str(), "pin".as_ref(), obj.as_os_str(), calls.as_os_str(), dir.as_ref()]))];
        run(&mut target("300"));
        if let Some(shm) = shm {
            let list = run(bpftime(shm).args(["link", "list"]));
            assert_eq!(list.matches(&format!(", pinned at {dir}/")).count(), 3, "{list}");
        }
        out.push(run(&mut cmd(&[loader.as_os_str(), "dump".as_ref(), dir.as_ref()])));
        out.push(run(&mut cmd(&[loader.as_os_str(), "unpin".as_ref(), obj.as_os_str(), dir.as_ref()])));
        run(&mut target("200"));
        out.push(run(&mut cmd(&[loader.as_os_str(), "dump".as_ref(), dir.as_ref(), "unpin".as_ref()])));
        let _ = std::fs::remove_dir(dir);
        out
    };
    let shm = format!("bpftime-pins-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let dir = format!("/sys/fs/bpf/bpftime-pins-{}", std::process::id());
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let ours = sequence(Some(&shm), &dir);
    assert!(ours[1].contains("stats[0] = 300\n"), "counted while pinned, after the loader exited: {ours:?}");
    assert!(ours[3].contains("stats[0] = 300\n"), "nothing counted after unpinning: {ours:?}");
    let progs = bpftime(&shm).args(["link", "list"]).output().unwrap();
    assert_eq!(text(&progs.stdout).lines().count(), 0, "no link left: {}", text(&progs.stdout));
    // bpftool (unmodified) opens a pin of ours.
    if let Ok(bpftool) = which("bpftool") {
        run(bpftime(&shm).args(["load", "--"]).arg(&loader).args(["pin"]).arg(&obj).arg(&calls).arg(&dir));
        let shown = run(&mut {
            let mut c = bpftime(&shm);
            c.args(["load", "--"]).arg(&bpftool).args(["map", "show", "pinned"]).arg(format!("{dir}/stats"));
            c
        });
        assert!(shown.contains("name stats") && shown.contains("max_entries 3"), "{shown}");
        run(bpftime(&shm).args(["load", "--"]).arg(&loader).arg("unpin").arg(&obj).arg(&dir));
        run(bpftime(&shm).args(["load", "--"]).arg(&loader).arg("dump").arg(&dir).arg("unpin"));
        let _ = std::fs::remove_dir(&dir);
    }
    bpftime_tests::remove_region(&shm);
    let kernel = sequence(None, &format!("{dir}-kernel"));
    assert_eq!(ours, kernel, "the same sequence on the kernel");
}

/// `bpf_send_signal` and `bpf_send_signal_thread` in a uprobe: the target receives exactly the
/// signals it receives under the kernel's uprobe, the helpers' results (and the refusal of an
/// invalid signal number) are counted alike. Also with the handlers on a signal stack, where a
/// probe hit in the first handler sends the second signal: it must be delivered below the first
/// handler's live frames, as the kernel delivers it (a hit that left the signal stack would make
/// the kernel take the signal stack as free).
#[test]
fn send_signal_from_a_uprobe_signals_like_the_kernel() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("send_signal");
    let target = build_target("signalled", false);
    for (mode, signals, sent) in [("", "usr1 9 usr2 3\n", 12), ("onstack", "usr1 14 usr2 17 frames ok\n", 26)] {
        let shm = format!("bpftime-send-signal-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&target);
        let (loader_out, target_out) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&target).arg("100").arg(mode));
        bpftime_tests::remove_region(&shm);
        assert_eq!(target_out, signals, "{mode}: {loader_out}");
        assert!(loader_out.contains(&format!("stats[0] = {sent}\n")) && loader_out.contains("stats[1] = 1\n"), "{mode}: {loader_out}");
        if is_root() {
            let mut kernel = Command::new(&loader);
            kernel.arg(&obj).arg(&target);
            let (k_loader, k_target) = session(kernel, Command::new(&target).arg("100").arg(mode));
            assert_eq!((loader_out, target_out), (k_loader, k_target), "{mode}: the kernel's");
        }
    }
}

/// A loader whose program our verifier refuses fails as it would on the kernel (its own error
/// path, our reason in libbpf's log), and nothing is left behind.
#[test]
fn a_refused_program_fails_the_loader_with_the_reason() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let shm = format!("bpftime-loader-refused-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let obj = build_example("loader_refused");
    let out = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(Path::new("/bin/true")).stdin(Stdio::null()).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load"), "the loader's own error path: {stderr}");
    assert!(stderr.contains("helper 176 (bpf_get_branch_snapshot) is not supported by bpftime"), "our reason in libbpf's log: {stderr}");
    let progs = bpftime(&shm).args(["prog", "list"]).output().unwrap();
    assert_eq!(text(&progs.stdout), "", "nothing left behind");
    bpftime_tests::remove_region(&shm);
}

/// libbpf's ring buffer consumer (mmap of the ring, epoll on the map fd) reading strings a
/// uretprobe sent, as bashreadline does: the same lines as from the kernel.
#[test]
fn a_libbpf_ring_buffer_consumer_gets_what_the_kernel_sends() {
    let _serial = serial();
    lines_through("loader_lines");
}

/// The same through a perf buffer (a perf event per CPU, mmapped before it is put in the
/// PERF_EVENT_ARRAY).
#[test]
fn a_libbpf_perf_buffer_consumer_gets_what_the_kernel_sends() {
    let _serial = serial();
    lines_through("loader_lines_perf");
}

fn lines_through(example: &str) {
    let loader = build_loader("ring_lines");
    let obj = build_example(example);
    let lines = build_target("lines", false);
    let shm = format!("bpftime-loader-{example}-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&lines).arg("20");
    let mut target = bpftime(&shm);
    target.args(["start", "--"]).arg(&lines).arg("20");
    let (ours_out, _) = session(ours, &mut target);
    assert!(ours_out.contains("line 19\n") && ours_out.ends_with("20 lines\n"), "{ours_out}");
    bpftime_tests::remove_region(&shm);
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let mut kernel = Command::new(&loader);
    kernel.arg(&obj).arg(&lines).arg("20");
    let (kernel_out, _) = session(kernel, Command::new(&lines).arg("20"));
    assert_eq!(ours_out, kernel_out, "the same loader on the kernel");
}

/// A perf buffer whose consumer falls behind loses what does not fit and says so with the next
/// sample, as the kernel does: a one-page ring per CPU, 100 samples made on one CPU before the
/// consumer reads, then one more; the consumer's lines (texts, `lost N`, totals) equal the
/// kernel's.
#[test]
fn perf_buffer_losses_are_reported_like_the_kernel() {
    let _serial = serial();
    let loader = build_loader("perf_lost");
    let obj = build_example("loader_lines_perf");
    let lines = build_target("lines", false);
    // Runs `loader`, then for each count the target on CPU 0 making that many samples, each
    // followed by a line to the loader; returns what the loader printed.
    let run = |mut loader: Command, target: &dyn Fn(&str) -> Command| -> String {
        let mut child = loader.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut stdin = child.stdin.take().unwrap();
        let mut all = String::new();
        out.read_line(&mut all).unwrap();
        assert_eq!(all, "attached\n", "the loader did not attach");
        for n in ["100", "1"] {
            let t = target(n).output().unwrap();
            assert!(t.status.success(), "target: {}", text(&t.stderr));
            stdin.write_all(b"go\n").unwrap();
            loop {
                let mut l = String::new();
                assert!(out.read_line(&mut l).unwrap() > 0, "the loader ended early:\n{all}");
                all.push_str(&l);
                if l.starts_with("drained:") {
                    break;
                }
            }
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
        all
    };
    let shm = format!("bpftime-loader-perf-lost-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&lines);
    let ours_out = run(ours, &|n| {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", env!("CARGO_BIN_EXE_bpftime"), "--shm", &shm, "start", "--"]).arg(&lines).arg(n);
        c
    });
    bpftime_tests::remove_region(&shm);
    // A 4096-byte ring holds 51 of these 80-byte samples: 49 lost, reported before the next.
    assert!(ours_out.contains("drained: 51 samples, 0 lost\nlost 49\nline 0 (three)\ndrained: 52 samples, 49 lost\n"), "{ours_out}");
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let mut on_kernel = Command::new(&loader);
    on_kernel.arg(&obj).arg(&lines);
    let kernel = run(on_kernel, &|n| {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&lines).arg(n);
        c
    });
    assert_eq!(ours_out, kernel, "the same consumer on the kernel");
}

/// The loader started after the target: the agent, which found nothing to attach at start,
/// follows the link table and attaches what the loader makes while the target runs. Also where
/// the region did not exist when the target started (`bpftime start -- app`, then `bpftime
/// load -- tool`, which makes it): the agent waits for it (before, it attached nothing, ever),
/// also past a file at its path that is not a region yet (one being made has no header yet).
#[test]
fn a_loader_started_after_the_target_is_picked_up() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-loader-late-{}", std::process::id());
    for region_first in ["made", "missing", "half made"] {
        bpftime_tests::remove_region(&shm);
        match region_first {
            "made" => assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success()),
            // As `ShmRegion::create` makes it, before its size and header are set.
            "half made" => drop(
                std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().write(true).create_new(true), 0o600)
                    .open(bpftime_shm::path_of(&shm))
                    .unwrap(),
            ),
            _ => {}
        }
        let mut target =
            bpftime(&shm).args(["start", "--"]).arg(&calls).args(["4000", "2", "wait"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        if region_first == "half made" {
            bpftime_tests::remove_region(&shm);
        }
        let l = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
        // The agent looks every 100 ms.
        std::thread::sleep(std::time::Duration::from_millis(500));
        target.stdin.take().unwrap().write_all(b"x").unwrap();
        assert!(target.wait().unwrap().success());
        let rest = loader_finished(l);
        assert!(rest.contains("stats[0] = 8000\n"), "region {region_first} at the target's start; two threads x 4000 add() calls:\n{rest}");
    }
    bpftime_tests::remove_region(&shm);
}

/// Attaching to a running process leaves its sleeping threads asleep: the hook engine signals
/// only threads that may be stopped inside the bytes it patches (a signal ends a `nanosleep`
/// early even under SA_RESTART; a kernel uprobe's attach never does). Two threads sleep 3 s in
/// one nanosleep each while a loader attaches a uprobe on add(), whose first instruction is
/// shorter than the jump (so threads could be stopped inside it); both sleeps run their full
/// time, and every call after them is counted.
#[test]
fn attaching_to_a_running_process_leaves_its_sleeps_alone() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-loader-sleep-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let target = bpftime(&shm).args(["start", "--"]).arg(&calls).args(["4000", "2", "sleep"]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let l = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
    let done = target.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{printed}");
    let rest = loader_finished(l);
    assert!(printed.contains("sleeps cut short: 0\n"), "a sleeping thread was woken to attach the probe:\n{printed}");
    assert!(rest.contains("stats[0] = 8000\n"), "two threads x 4000 add() calls after their sleeps:\n{rest}");
    bpftime_tests::remove_region(&shm);
}

/// Kernel uprobes on a function the agent patches (another tool's, say a system-wide
/// bpftrace), in either order, break nothing.
///
/// Kernel first: its `int3` is in the target's copy of the code and the kernel keeps the byte
/// it replaced. The agent reads that byte from the file and patches its jump over the `int3`:
/// our probe counts every call, also after the kernel's probe goes (the kernel restores its
/// byte only where it still finds its `int3`). Before, the agent took the `int3` for the
/// function's code: it kept a trap of its own that the kernel's handler took, lost it when the
/// kernel restored its byte, and a detach wrote the stale `int3` back (the target died of it).
///
/// Kernel second: it writes its `int3` over our jump, runs the function's first instruction
/// out of line and resumes the thread after it, inside our jump; when it goes, it puts back
/// only the first byte. While the agent has not noticed (its link thread told to look only
/// every ten minutes), the jump's byte after the first instruction is an `int3` (the jump
/// goes to a landing chosen for that) that sends each call on to the trampoline: the kernel's
/// probe counts all 8000 calls and the target's sum is right. Once the agent notices (every
/// 100 ms), it gives the function its own bytes back, so the kernel's probe can go and the
/// calls after it run the function's own code. Before, the first call after the kernel's probe
/// came ran the middle of our jump, and so did every call after it went.
#[test]
fn kernel_uprobes_on_a_function_we_patch_break_nothing() {
    let _serial = serial();
    if !is_root() {
        return println!("skipping: a kernel uprobe needs root");
    }
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let expected = Command::new(&calls).args(["4000", "2"]).output().unwrap();
    // (the kernel's probe first, the agent's poll, the kernel's probe gone before the calls,
    // calls our probe counts, calls the kernel's counts)
    for (kernel_first, poll_ms, kernel_gone, ours_count, kernel_count) in
        [(true, "100", true, 8000, 0), (false, "600000", false, 0, 8000), (false, "100", true, 0, 0)]
    {
        let case = format!("kernel first {kernel_first}, poll {poll_ms} ms");
        let shm = format!("bpftime-loader-beside-kernel-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let kernel_loader = || loader_attached(Command::new(&loader).arg(&obj).arg(&calls));
        let mut kernel = kernel_first.then(kernel_loader);
        let ours = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
        let mut target = bpftime(&shm)
            .env("BPFTIME_LINK_POLL_MS", poll_ms)
            .args(["start", "--"])
            .arg(&calls)
            .args(["4000", "2", "wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The agent's stderr, watched for its word that it gave the function back.
        let (gave_back, heard) = std::sync::mpsc::channel();
        let stderr = target.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("a breakpoint not ours") {
                    let _ = gave_back.send(());
                }
                all += &line;
                all += "\n";
            }
            all
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        if kernel.is_none() {
            kernel = Some(kernel_loader());
        }
        if !kernel_first && poll_ms == "100" {
            assert!(heard.recv_timeout(std::time::Duration::from_secs(20)).is_ok(), "{case}: the agent did not give the function back");
        } else {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let mut kernel_out = None;
        if kernel_gone {
            kernel_out = kernel.take().map(loader_finished);
        }
        target.stdin.take().unwrap().write_all(b"x").unwrap();
        let done = target.wait_with_output().unwrap();
        let stderr = stderr.join().unwrap();
        assert!(done.status.success(), "{case}: the target: {:?} {stderr}", done.status);
        assert_eq!(text(&done.stdout), text(&expected.stdout), "{case}: the target's results");
        let kernel_out = kernel_out.or_else(|| kernel.map(loader_finished)).unwrap();
        assert!(kernel_out.contains(&format!("stats[0] = {kernel_count}\n")), "{case}: the kernel's probe:\n{kernel_out}");
        let ours_out = loader_finished(ours);
        assert!(ours_out.contains(&format!("stats[0] = {ours_count}\n")), "{case}: ours:\n{ours_out}");
        bpftime_tests::remove_region(&shm);
    }
}

/// A loader with count_calls's interface started from `cmd`, once it printed "attached".
fn loader_attached(cmd: &mut Command) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("attached"), "{first}");
    (child, out)
}

/// Tells a loader from [`loader_attached`] to print its counts and exit; returns what it printed.
fn loader_finished((mut child, mut out): (std::process::Child, BufReader<std::process::ChildStdout>)) -> String {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    rest
}

/// The sum of the counts of a libbpf-tools histogram (`  2048 -> 4095  : 4928  |***|`).
fn histogram_total(out: &str) -> u64 {
    out.lines().filter(|l| l.contains("->")).filter_map(|l| l.split(':').nth(1)?.split('|').next()?.trim().parse::<u64>().ok()).sum()
}

/// Waits until a tool attached: under the server, until region `shm` holds at least `probes`
/// links (what bpftrace says it attaches; a probe on a clock is none, hence a time limit), then
/// until no more come for 300 ms (a tool attaches its probes one by one: on a busy machine a
/// target started after the first missed the last; one attach may take a few hundred ms while
/// the loader's own agent takes it in) and every CPU of its perf event arrays has a reader; on
/// the kernel (nothing to see: the tool's "Tracing" line sits in its stdio buffer), a while.
fn wait_attached(shm: Option<&str>, probes: usize) {
    let Some(shm) = shm else {
        std::thread::sleep(std::time::Duration::from_millis(2500));
        return;
    };
    let links = || bpftime_shm::ShmRegion::open(shm).map_or(0, |r| bpftime_runtime::links::list(&r).len());
    for _ in 0..250 {
        if links() >= probes {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (mut seen, mut steady) = (0, 0);
    for _ in 0..500 {
        let now = links();
        (seen, steady) = if now == seen { (now, steady + 1) } else { (now, 0) };
        // (A tool may open its perf buffers after attaching.)
        if seen > 0 && steady >= 15 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A tool opens its perf buffers after attaching: what its programs output before a CPU's
    // ring has its reader is dropped, as on the kernel, where that slot is still empty.
    let unread = || {
        let Ok(region) = bpftime_shm::ShmRegion::open(shm) else { return false };
        let maps = bpftime_maps::Map::list(&std::sync::Arc::new(region));
        maps.iter().any(|m| m.map_type() == bpftime_maps::MapType::PerfEventArray && (m.perf_readers().len() as u32) < m.spec().max_entries.min(m.ncpus()))
    };
    for _ in 0..250 {
        if !unread() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Debian's libbpf-tools `funclatency` (an unmodified binary with a libbpf skeleton: global
/// data through mmap, a cgroup map, uprobe + uretprobe by `PROGRAM:FUNCTION`) counts every call
/// of the target's add(), as it does on the kernel.
#[test]
fn libbpf_tools_funclatency_counts_what_the_kernel_counts() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/funclatency", "libbpf-tools") else { return };
    let calls = build_target("calls", false);
    let func = format!("{}:add", calls.display());
    let dir = std::env::temp_dir().join(format!("bpftime-funclatency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-funclatency-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).args(["-d", "4"]).arg(&func);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&calls).args(["5000", "1"]), &dir.join("ours"), false);
    assert_eq!(histogram_total(&out), 5000, "every add() call timed:\n{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&tool);
        kernel.args(["-d", "4"]).arg(&func);
        let out = tool_session(kernel, None, Command::new(&calls).args(["5000", "1"]), &dir.join("kernel"), false);
        assert_eq!(histogram_total(&out), 5000, "the kernel too:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loader killed before it could detach (SIGKILL: no exit code runs) leaves no probes behind:
/// its links name it as their owner, and a process that is gone holds no links.
#[test]
fn a_killed_loader_leaves_nothing_attached() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let shm = format!("bpftime-loader-killed-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut l = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(l.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("attached"), "{first}");
    // The loader is the child of `bpftime load`: kill it, not bpftime.
    let pid = std::fs::read_to_string(format!("/proc/{}/task/{}/children", l.id(), l.id())).unwrap();
    let pid: i32 = pid.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on our own grandchild.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    l.wait().unwrap();
    let out = bpftime(&shm).args(["start", "--"]).arg(&calls).arg("1000").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let maps = bpftime(&shm).args(["map", "dump", "stats"]).output().unwrap();
    assert!(!text(&maps.stdout).contains("0 => 1000"), "nothing counted:\n{}", text(&maps.stdout));
    bpftime_tests::remove_region(&shm);
}

/// The first child of process `pid` (the loader `bpftime load` runs).
fn child_of(pid: u32) -> i32 {
    for _ in 0..100 {
        if let Some(c) =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok().and_then(|s| s.split_whitespace().next().and_then(|c| c.parse().ok()))
        {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no child of {pid}");
}

/// bpftrace's output without the lines that depend on the machine (memlock, tracefs).
fn bpftrace_result(out: &str) -> String {
    out.lines().filter(|l| !l.contains("RLIMIT_MEMLOCK") && !l.contains("uprobe_events") && !l.contains("failed to detach")).collect::<Vec<_>>().join("\n")
}

/// Runs `tool` (the tool itself, or `bpftime load -- TOOL` when `shm` names the region) with
/// its output to `out`, waits for it to attach (see [`wait_attached`]; bpftrace, which compiles
/// with LLVM first, says "Attaching"), runs `target`, then waits for the tool to end: by itself
/// (`interrupt` false: it traces for a set time) or on SIGINT, when tools print their results.
fn tool_session(mut tool: Command, shm: Option<&str>, target: &mut Command, out: &Path, interrupt: bool) -> String {
    let f = std::fs::File::create(out).unwrap();
    let mut t = tool.stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
    let says_attaching = tool.get_program().to_string_lossy().ends_with("bpftrace") || tool.get_args().any(|a| a.to_string_lossy().ends_with("bpftrace"));
    let mut probes = 0;
    for _ in 0..400 {
        let said = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(n) = said.lines().find_map(|l| l.strip_prefix("Attaching ")?.split_whitespace().next()?.parse().ok()) {
            probes = n;
        }
        if !says_attaching || said.contains("Attaching") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_attached(shm, probes);
    let o = target.output().unwrap();
    if !o.status.success() {
        // The tool (the loader `bpftime load` runs, first) would outlive the failed test.
        if shm.is_some() {
            // SAFETY: kill(2) on our own grandchild.
            unsafe { libc::kill(child_of(t.id()), libc::SIGKILL) };
        }
        let _ = t.kill();
        let _ = t.wait();
        panic!("target: {:?}: {}", o.status, text(&o.stderr));
    }
    if interrupt {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let pid = if shm.is_some() { child_of(t.id()) } else { t.id() as i32 };
        interrupt_until_it_ends(&mut t, pid);
    }
    t.wait().unwrap();
    std::fs::read_to_string(out).unwrap()
}

/// Sends SIGINT to `pid` (the tool `t`, or the loader it runs) until `t` ends: a tool may miss
/// one (bpftrace, now and then, on the kernel too), so it is sent again every two seconds.
fn interrupt_until_it_ends(t: &mut std::process::Child, pid: i32) {
    for _ in 0..30 {
        // SAFETY: kill(2) on a process we started.
        unsafe { libc::kill(pid, libc::SIGINT) };
        for _ in 0..40 {
            if t.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    t.wait().unwrap();
}

/// bpftrace's `opensnoop.bt` (from apt) sees the traced process's opens, and none of its own
/// after its probes are detached, as on the kernel: its loader's close of a link returns once
/// the agent beside the server in that process has taken the removal in. It opens `/dev/null`
/// as it exits, which its `sys_enter_openat` probe printed in about half the runs (with the
/// path from the entry as garbage where the open was our own work's).
#[test]
fn bpftrace_opensnoop_sees_no_open_of_its_own_after_detaching() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let tool = Path::new("/usr/sbin/opensnoop.bt");
    if !tool.exists() || !bpftime_tests::kernel::tracefs_mounted() {
        return println!("skipping: no opensnoop.bt, or tracefs is not mounted");
    }
    let dir = std::env::temp_dir().join(format!("bpftime-opensnoop-bt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (PID, COMM, FD, ERR, PATH.)
    let check = |out: &str, whose: &str| {
        let hostname = out.lines().filter(|l| l.split_whitespace().nth(1) == Some("cat") && l.ends_with(" /etc/hostname")).count();
        assert_eq!(hostname, 1, "{whose}: {out}");
        assert!(!out.lines().any(|l| l.split_whitespace().nth(1) == Some("bpftrace")), "{whose}: the tool's own open: {out}");
    };
    for run in 0..3 {
        let shm = format!("bpftime-opensnoop-bt-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&bpftrace).arg(tool);
        let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--", "cat", "/etc/hostname"]), &dir.join("ours"), true);
        bpftime_tests::remove_region(&shm);
        check(&out, &format!("ours, run {run}"));
    }
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.arg(tool);
        let out = tool_session(kernel, None, Command::new("cat").arg("/etc/hostname"), &dir.join("kernel"), true);
        check(&out, "the kernel's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace (unmodified, from apt) one-liners with uprobe and uretprobe: count, hist(arg0),
/// hist(retval) and printf through its perf buffer print what they print on the kernel.
#[test]
fn bpftrace_one_liners_print_what_they_print_on_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let calls = build_target("calls", false);
    let c = calls.display();
    let script =
        format!("uprobe:{c}:add {{ @calls = count(); @args = hist(arg0); }} uretprobe:{c}:add {{ @rets = hist(retval); printf(\"ret %d\\n\", retval); }}");
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&calls).arg("200"), &dir.join("ours"), true);
    let ours = bpftrace_result(&out);
    assert!(ours.contains("@calls: 200"), "{out}");
    assert_eq!(ours.matches("ret ").count(), 200, "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", &script]);
        let out = tool_session(kernel, None, Command::new(&calls).arg("200"), &dir.join("kernel"), true);
        assert_eq!(ours, bpftrace_result(&out), "the same one-liners on the kernel");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace's `count()` and `sum()` look a per-CPU value up and write it back, which is safe on
/// the kernel because a uprobe's program runs with preemption disabled. Here a thread can be
/// preempted in the middle, and another thread run the program on that CPU: with eight threads
/// on fewer CPUs, counts came out 5 to 17% short. Every call is counted, as on the kernel.
#[test]
fn bpftrace_counts_every_call_of_eight_threads_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let calls = build_target("calls", false);
    let script = format!("uprobe:{}:add {{ @calls = count(); @sum = sum(arg0); }}", calls.display());
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-threads-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&calls).args(["50000", "8"]), &dir.join("ours"), true);
    let ours = bpftrace_result(&out);
    let sum: u64 = 8 * (0..50_000u64).sum::<u64>();
    assert!(ours.contains("@calls: 400000") && ours.contains(&format!("@sum: {sum}")), "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", &script]);
        let out = tool_session(kernel, None, Command::new(&calls).args(["50000", "8"]), &dir.join("kernel"), true);
        assert_eq!(ours, bpftrace_result(&out), "the same counts on the kernel");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loader's maps, programs and links go when it exits, as the kernel frees them with their
/// last reference, and their memory is reused: bpftrace run again and again with a stack map
/// (about 130 MiB) in a 400 MiB region. Before, every run left its maps behind and the fourth
/// failed ("failed to create stack id map: Cannot allocate memory").
#[test]
fn a_loader_run_again_and_again_does_not_fill_the_region() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let shm = format!("bpftime-loader-again-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create", "--size", "400M"]).output().unwrap().status.success());
    for run in 0..6 {
        let out = bpftime(&shm)
            .args(["load", "--"])
            .arg(&bpftrace)
            .args(["-e", "uprobe:/bin/true:main { @stacks[ustack] = count(); @n = count(); } BEGIN { exit(); }"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success() && !err.contains("failed to create"), "run {run}: {err}");
        let list = |what: &str| text(&bpftime(&shm).args([what, "list"]).output().unwrap().stdout);
        assert_eq!((list("map"), list("prog"), list("link")), (String::new(), String::new(), String::new()), "run {run}: nothing left behind");
        // Two runs' maps are at most waiting for their grace period (2 s) at a time here.
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    bpftime_tests::remove_region(&shm);
}

/// A loader's tail-call programs, the prog array libbpf filled with them from `.values` and
/// the program that calls through it all go with the loader (the array holds its programs
/// only while something but programs holds it, as in the kernel).
#[test]
fn tail_call_tables_go_with_their_loader() {
    let _serial = serial();
    let loader = build_loader("load_only");
    let shm = format!("bpftime-load-only-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let out = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(build_example("tail_calls")).output().unwrap();
    assert_eq!(text(&out.stdout), "load 0\n", "{}", text(&out.stderr));
    let list = |what: &str| text(&bpftime(&shm).args([what, "list"]).output().unwrap().stdout);
    assert_eq!((list("prog"), list("map")), (String::new(), String::new()), "nothing left behind");
    bpftime_tests::remove_region(&shm);
}

/// A map stays while something holds it, as on the kernel: a loader's forked child that exits
/// (with copies of the loader's fds) takes nothing with it, and a map another process opened by
/// id outlives the loader that made it.
#[test]
fn maps_stay_while_anything_holds_them_as_on_the_kernel() {
    let _serial = serial();
    let loader = build_loader("map_holders");
    let run = |shm: Option<&str>| -> String {
        let cmd = |args: &[&str]| match shm {
            Some(shm) => {
                let mut c = bpftime(shm);
                c.args(["load", "--"]).arg(&loader).args(args);
                c
            }
            None => {
                let mut c = Command::new(&loader);
                c.args(args);
                c
            }
        };
        let fork = cmd(&["fork"]).output().unwrap();
        assert!(fork.status.success(), "{}", text(&fork.stderr));
        let id_file = std::env::temp_dir().join(format!("bpftime-map-holders-{}-{}", std::process::id(), shm.is_some()));
        let id = id_file.to_str().unwrap();
        let mut creator = cmd(&["create", id]).spawn().unwrap();
        let hold = cmd(&["hold", id]).output().unwrap();
        assert!(creator.wait().unwrap().success());
        let _ = std::fs::remove_file(&id_file);
        assert!(hold.status.success(), "{}", text(&hold.stderr));
        text(&fork.stdout) + &text(&hold.stdout)
    };
    let shm = format!("bpftime-map-holders-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let ours = run(Some(&shm));
    // A holder that is gone holds nothing: bpftool opens every map by id while the creator
    // runs, then exits; the creator's exit takes the map with it.
    let id_file = std::env::temp_dir().join(format!("bpftime-map-holders-bpftool-{}", std::process::id()));
    let mut creator = bpftime(&shm).args(["load", "--"]).arg(&loader).arg("create").arg(&id_file).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let shown = bpftime(&shm).args(["load", "--", "bpftool", "map", "show"]).output().unwrap();
    assert!(text(&shown.stdout).contains(": array"), "bpftool saw the map: {}{}", text(&shown.stdout), text(&shown.stderr));
    assert!(creator.wait().unwrap().success());
    let _ = std::fs::remove_file(&id_file);
    let maps = text(&bpftime(&shm).args(["map", "list"]).output().unwrap().stdout);
    assert_eq!(maps, "", "the map went with its creator");
    bpftime_tests::remove_region(&shm);
    assert_eq!(ours, "after a forked child exited: lookup 0 value 42\nopened by id: yes\nafter its creator exited: lookup 0 value 42\n");
    if is_root() {
        assert_eq!(ours, run(None), "the kernel's");
    }
}

/// A loader killed (SIGKILL) before it could let go leaves nothing behind, as on the kernel
/// (which closes a dead process's fds): its links, programs, maps and BTF go once another
/// process opens the region (here bpftool's server). A loader that forks a child and leaves
/// without its exit handlers (a daemon, `_exit`) keeps what the child holds while it lives.
#[test]
fn a_killed_loaders_objects_go_as_on_the_kernel() {
    let _serial = serial();
    let loader = build_loader("count_calls");
    let obj = build_example("loader_calls");
    let calls = build_target("calls", false);
    let holders = build_loader("map_holders");
    let shm = format!("bpftime-killed-loader-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let kill = |pid: i32| {
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    let mut ours = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    wait_attached(Some(&shm), 0);
    let region = bpftime_shm::ShmRegion::open(&shm).unwrap();
    let objects = |region: &bpftime_shm::ShmRegion| region.objects().into_iter().map(|o| format!("{:?} {}", o.kind, o.name)).collect::<Vec<_>>();
    let made = objects(&region);
    assert!(
        made.iter().any(|o| o.starts_with("Btf")) && made.iter().any(|o| o.starts_with("Program")) && made.iter().any(|o| o.starts_with("Map")),
        "{made:?}"
    );
    kill(child_of(ours.id()));
    let _ = ours.wait();
    assert_eq!(objects(&region), made, "nothing is removed before someone opens the region");
    let shown = bpftime(&shm).args(["load", "--", "bpftool", "prog", "show"]).output().unwrap();
    assert!(shown.status.success() && !text(&shown.stdout).contains("add_entry"), "{}{}", text(&shown.stdout), text(&shown.stderr));
    assert_eq!(objects(&region), Vec::<String>::new(), "what the killed loader made (it had {made:?})");
    // A daemon: the loader's child holds the map after the loader left.
    let daemon = |cmd: &mut Command, tag: &str| -> String {
        let file = std::env::temp_dir().join(format!("bpftime-daemon-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        assert!(cmd.arg(&holders).arg("daemon").arg(&file).status().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(1000));
        if tag == "ours" {
            // Another loader opens the region while the daemon runs.
            let shown = bpftime(&shm).args(["load", "--", "bpftool", "map", "show"]).output().unwrap();
            assert!(text(&shown.stdout).contains(": array"), "the daemon's map is there: {}{}", text(&shown.stdout), text(&shown.stderr));
        }
        for _ in 0..100 {
            if std::fs::read_to_string(&file).is_ok_and(|s| s.ends_with('\n')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::fs::read_to_string(&file).unwrap_or_default()
    };
    let theirs = daemon(bpftime(&shm).args(["load", "--"]), "ours");
    assert_eq!(theirs, "a daemon after its loader left: lookup 0 value 42\n");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(objects(&region), Vec::<String>::new(), "the daemon's exit took its map with it");
    // A child that runs another program (fork, then exec) holds none of the loader's fds (they
    // are close-on-exec): the killed loader's map goes while that child runs.
    let spawned = |cmd: &mut Command, tag: &str| -> String {
        let file = std::env::temp_dir().join(format!("bpftime-spawn-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let mut loader = cmd.arg(&holders).arg("spawn").arg(&file).spawn().unwrap();
        let mut id = String::new();
        for _ in 0..100 {
            id = std::fs::read_to_string(&file).unwrap_or_default();
            if id.ends_with('\n') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&file);
        kill(if tag == "ours" { child_of(loader.id()) } else { loader.id() as i32 });
        let _ = loader.wait();
        id.trim().to_string()
    };
    let id = spawned(bpftime(&shm).args(["load", "--"]), "ours");
    let shown = bpftime(&shm).args(["load", "--", "bpftool", "map", "show", "id", &id]).output().unwrap();
    assert!(!shown.status.success(), "map {id} went with its loader: {}", text(&shown.stdout));
    assert_eq!(objects(&region), Vec::<String>::new(), "nothing is left while the loader's exec'd child runs");
    bpftime_tests::remove_region(&shm);
    if !is_root() {
        println!("skipping the kernel comparison: it needs root");
        return;
    }
    let mut kernel = Command::new(&loader).arg(&obj).arg(&calls).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut said = BufReader::new(kernel.stdout.take().unwrap()).lines();
    assert!(said.any(|l| l.is_ok_and(|l| l.contains("attached"))), "the loader attached on the kernel");
    let progs = || text(&Command::new("bpftool").args(["prog", "show"]).output().unwrap().stdout);
    assert!(progs().contains("add_entry"), "{}", progs());
    kill(kernel.id() as i32);
    let _ = kernel.wait();
    // The kernel frees a dead process's programs after an RCU grace period.
    for _ in 0..50 {
        if !progs().contains("add_entry") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!progs().contains("add_entry"), "the kernel dropped them: {}", progs());
    assert_eq!(daemon(&mut Command::new("env"), "kernel"), theirs, "the kernel's daemon");
    let id = spawned(&mut Command::new("env"), "kernel");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let shown = Command::new("bpftool").args(["map", "show", "id", &id]).output().unwrap();
    assert!(!shown.status.success(), "the kernel dropped map {id}: {}", text(&shown.stdout));
}

/// bpftrace on a Go program (cgo): a uprobe on a Go function (its arguments in Go's registers,
/// read with `reg()`) and the program's one-byte writes, made by 2,000 goroutines on stacks
/// that start at 2 KiB, count what the kernel counts.
#[test]
fn bpftrace_counts_a_go_programs_calls_and_writes_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let target = bpftime_tests::clang::build_go_target("goroutines");
    let script = format!(
        "uprobe:{}:main.add {{ @calls = count(); @sum = sum(reg(\"ax\") + reg(\"bx\")); }} \
         tracepoint:syscalls:sys_enter_write /comm == \"goroutines\"/ {{ @writes[args->count] = count(); }}",
        target.display()
    );
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-go-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&target).args(["2000", "write"]), &dir.join("ours"), true);
    let ours = bpftrace_result(&out);
    assert!(ours.contains("@calls: 100000") && ours.contains(&format!("@sum: {}", 2000 * 1275)), "{out}");
    assert!(ours.contains("@writes[1]: 100000"), "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", &script]);
        let out = tool_session(kernel, None, Command::new(&target).args(["2000", "write"]), &dir.join("kernel"), true);
        assert_eq!(ours, bpftrace_result(&out), "the same counts on the kernel");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace's USDT probes (its own ELF-note parsing, argument specs and semaphore handling):
/// counts and argument sums of a `<sys/sdt.h>` target equal the kernel's, the guarded probe
/// firing because bpftrace raised its semaphore through us as through the kernel.
#[test]
fn bpftrace_usdt_probes_count_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let usdt = build_target("usdt", false);
    let u = usdt.display();
    let script =
        format!("usdt:{u}:bpftime:tick {{ @ticks = count(); @sum = sum(arg1); }} usdt:{u}:bpftime:guarded {{ @guarded = count(); @gsum = sum(arg0); }}");
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-usdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-usdt-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&usdt).arg("100"), &dir.join("ours"), true);
    let ours = bpftrace_result(&out);
    for line in ["@ticks: 100", "@sum: 9900", "@guarded: 100", "@gsum: 4950"] {
        assert!(ours.contains(line), "{line}\n{out}");
    }
    // The target started by bpftrace (`-c`): its probes are for its pid, and it is named while
    // it waits, stopped after its exec, for them; it gets the agent from its environment, and
    // nothing tries to load it there meanwhile.
    let command = format!("{u} 100");
    let o = bpftime(&shm).args(["load", "--"]).arg(&bpftrace).args(["-c", &command, "-e", &script]).output().unwrap();
    let started = bpftrace_result(&(text(&o.stdout) + &text(&o.stderr)));
    assert!(o.status.success() && !text(&o.stderr).contains("without the agent"), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(started.replacen("100 ticks, sum 4950\n", "", 1), ours, "with -c (the target's own line left out)");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", &script]);
        let out = tool_session(kernel, None, Command::new(&usdt).arg("100"), &dir.join("kernel"), true);
        assert_eq!(ours, bpftrace_result(&out), "the same probes on the kernel");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--kernel-passthrough`: a bpftrace script mixing a kernel tracepoint (which only the kernel
/// can run) with a uprobe starts, the tracepoint runs in the kernel and the uprobe in the
/// target, and it prints what it prints on the kernel (`printf` from both, through one perf
/// buffer). Without the switch the same script fails
/// as bpftrace fails where a probe cannot attach, and nothing is left behind.
#[test]
fn kernel_passthrough_runs_kernel_probes_beside_user_probes() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    if !is_root() || !bpftime_tests::kernel::tracefs_mounted() {
        println!("skipping: kernel tracepoints need root and tracefs");
        return;
    }
    // It calls add() 200 times while an interval timer runs: setitimer(2) arms it and, at
    // the end, disarms it (the kernel's `itimer_state` tracepoint, twice).
    let timeouts = build_target("timeouts", false);
    // Both print through one perf buffer: the kernel's records are relayed into the ring the
    // loader reads, beside the target's.
    let script = format!(
        "tracepoint:timer:itimer_state /comm == \"timeouts\"/ {{ @armed = count(); printf(\"itimer %d\\n\", args->which); }} \
         uprobe:{}:add {{ @adds = count(); if (arg0 == 99) {{ printf(\"add %d\\n\", arg0); }} }}",
        timeouts.display()
    );
    let dir = std::env::temp_dir().join(format!("bpftime-passthrough-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-passthrough-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--kernel-passthrough", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&timeouts).arg("200"), &dir.join("ours"), true);
    let ours = bpftrace_result(&out);
    assert!(ours.contains("@adds: 200"), "{out}");
    assert!(ours.contains("@armed: 2") && ours.contains("itimer 0\n") && ours.contains("add 99\n"), "{out}");
    let mut kernel = Command::new(&bpftrace);
    kernel.args(["-e", &script]);
    let out = tool_session(kernel, None, Command::new(&timeouts).arg("200"), &dir.join("kernel"), true);
    // The same lines. Their order is not: bpftrace reads one perf buffer per CPU, so records
    // written close together on two CPUs (the last `add` and the timer's end) print
    // in the order it drains the buffers, on the kernel as here.
    let sorted = |s: &str| {
        let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&ours), sorted(&bpftrace_result(&out)), "the same script on the kernel:\n{ours}");
    // Without the switch: bpftrace's own error for a probe that cannot attach.
    let o = bpftime(&shm).args(["load", "--"]).arg(&bpftrace).args(["-e", &script]).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("ERROR"), "{}{}", text(&o.stdout), text(&o.stderr));
    let links = bpftime(&shm).args(["link", "list"]).output().unwrap();
    assert_eq!(text(&links.stdout), "", "nothing left attached");
    // Debian's libbpf-tools runqlat (scheduler tracepoints through BTF, kernel-only program
    // types, maps in .bss): prints its histogram as on the kernel; refused without the switch.
    if let Some(runqlat) = installed_or_skip("/usr/sbin/runqlat", "libbpf-tools") {
        let o = bpftime(&shm).args(["load", "--kernel-passthrough", "--"]).arg(&runqlat).args(["1", "1"]).output().unwrap();
        assert!(o.status.success() && text(&o.stdout).contains("usecs") && text(&o.stdout).contains("|*"), "{}{}", text(&o.stdout), text(&o.stderr));
        let k = Command::new(&runqlat).args(["1", "1"]).output().unwrap();
        assert!(k.status.success() && text(&k.stdout).contains("usecs"), "on the kernel: {}", text(&k.stderr));
        let o = bpftime(&shm).args(["load", "--"]).arg(&runqlat).args(["1", "1"]).output().unwrap();
        // Its probe for BTF-enabled tracepoints fails (we refuse those program types), so it
        // takes its raw tracepoints, which are the kernel's: it cannot attach, and says why.
        let err = text(&o.stderr);
        assert!(!o.status.success() && err.contains("failed to attach") && err.contains("--kernel-passthrough"), "{err}");
    }
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bpftrace -c CMD`: the command bpftrace starts is a traced process (it gets the agent, not
/// the server), and the script counts its calls, sums its results and sees the exec that
/// started it as on the kernel.
#[test]
fn bpftrace_traces_the_command_it_starts_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let calls = build_target("calls", false);
    let c = calls.display();
    // And the execve that starts it, made by bpftime's child before the agent is there: seen
    // (its entry runs in the new image) under the caller's name, as the kernel sees it.
    let script = format!(
        "uprobe:{c}:add {{ @calls = count(); }} uretprobe:{c}:add {{ @sum = sum(retval); }} \
         tracepoint:syscalls:sys_enter_execve /str(args->filename) == \"{c}\"/ {{ @exec[comm] = count(); }}"
    );
    let command = format!("{c} 250 2");
    let shm = format!("bpftime-bpftrace-c-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
        // The command, stopped after its exec until the probes are attached, gets the agent from
        // its environment: nothing tries to load it there meanwhile.
        assert!(!text(&o.stderr).contains("without the agent"), "{}", text(&o.stderr));
        bpftrace_result(&(text(&o.stdout) + &text(&o.stderr)))
    };
    let ours = run(bpftime(&shm).args(["load", "--"]).arg(&bpftrace).args(["-c", &command, "-e", &script]));
    bpftime_tests::remove_region(&shm);
    assert!(ours.contains("@calls: 500") && ours.contains("sum 186750") && ours.contains("@exec[bpftrace]: 1"), "{ours}");
    if is_root() {
        let kernel = run(Command::new(&bpftrace).args(["-c", &command, "-e", &script]));
        assert_eq!(ours, kernel, "the kernel's");
    }
}

/// bpftrace's `@[ustack] = count()`: its stack map (131,072 stacks of 127 frames, 130 MiB)
/// fits the region `bpftime load` makes (sparse: only the pages in use take memory), and the
/// hits are counted by stack as on the kernel.
#[test]
fn bpftrace_counts_user_stacks_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let calls = build_target("calls", false);
    let script = format!("uprobe:{}:add {{ @[ustack] = count(); }}", calls.display());
    let dir = std::env::temp_dir().join(format!("bpftime-ustack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-ustack-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    // Each stack's count (the frames' addresses differ between runs).
    let counts = |out: &str| -> Vec<u64> {
        let mut c: Vec<u64> = out.lines().filter_map(|l| l.strip_prefix("]: ")?.trim().parse().ok()).collect();
        c.sort_unstable();
        c
    };
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&calls).arg("300"), &dir.join("ours"), true);
    let size = std::fs::metadata(format!("/dev/shm/{shm}")).map(|m| m.len()).unwrap_or(0);
    bpftime_tests::remove_region(&shm);
    assert!(counts(&out).iter().sum::<u64>() == 300 && !counts(&out).is_empty(), "{out}");
    assert!(size > 130 << 20, "the loader's region: {size} bytes");
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", &script]);
        let k = tool_session(kernel, None, Command::new(&calls).arg("300"), &dir.join("kernel"), true);
        assert_eq!(counts(&out), counts(&k), "the kernel's:\n{k}\nours:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace's `ustack` walks the same frames as the kernel's: a uprobe on a `push %rbp` shows
/// its caller (read at `[sp]`, the frame not made yet), a leaf without a frame skips its caller
/// as the frame-pointer chain does, a return probe starts at the return address, and a frame
/// whose return address a return probe replaced with our stub shows the real one (as the kernel
/// shows real addresses in place of its trampoline). Both ways of running return probes.
#[test]
fn bpftrace_user_stacks_name_the_frames_the_kernel_names() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    if !is_root() {
        eprintln!("skipped: the kernel's stacks need root");
        return;
    }
    let frames = build_target("frames", false);
    let f = frames.display();
    let script = format!(
        "uprobe:{f}:outer {{ @o[ustack(4)] = count(); }} uprobe:{f}:inner {{ @i[ustack(4)] = count(); }} \
         uretprobe:{f}:outer {{ @ro[ustack(3)] = count(); }} uretprobe:{f}:inner {{ @ri[ustack(4)] = count(); }} \
         uretprobe:{f}:run {{ @rr = count(); }}"
    );
    let dir = std::env::temp_dir().join(format!("bpftime-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each map's stacks with their counts, sorted; frames outside the executable (libc, which
    // the agent's own mappings move) as `lib`. The executable is at the same place in every
    // run (no address randomisation).
    let stacks = |out: &str| -> Vec<String> {
        let mut entries = vec![];
        let mut entry = String::new();
        for line in bpftrace_result(out).lines().map(str::trim) {
            if line.starts_with("0x") && !line.starts_with("0x5555") {
                entry.push_str("lib ");
            } else if !line.is_empty() && !line.starts_with("Attaching") {
                entry.push_str(line);
                entry.push(' ');
            }
            if line.starts_with("]: ") || line.starts_with("@rr") {
                entries.push(std::mem::take(&mut entry));
            }
        }
        entries.sort();
        entries
    };
    let target = |cmd: &mut Command| -> Command {
        let mut c = std::mem::replace(cmd, Command::new("true"));
        c.args(["setarch", "-R"]).arg(&frames).arg("50");
        c
    };
    let mut kernel = Command::new(&bpftrace);
    kernel.args(["-e", &script]);
    let k = stacks(&tool_session(kernel, None, &mut target(&mut Command::new("env")), &dir.join("kernel"), true));
    assert!(k.len() >= 6 && k.iter().any(|e| e.starts_with("@rr: 1")), "{k:#?}");
    for method in ["ret", "stack"] {
        let shm = format!("bpftime-frames-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
        let mut start = bpftime(&shm);
        start.env("BPFTIME_URETPROBE", method).args(["start", "--"]);
        let out = tool_session(ours, Some(&shm), &mut target(&mut start), &dir.join(method), true);
        bpftime_tests::remove_region(&shm);
        assert_eq!(stacks(&out), k, "return probes by {method}: ours, then the kernel's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `examples/loaders/<name>.c` (a program that makes bpf(2) or perf_event_open(2)
/// calls and prints what each gave) under the server, checks that each of `expected` is one
/// of its lines, and, as root, that it prints exactly what it prints on the kernel.
fn matrix_matches_the_kernel(name: &str, expected: &[&str]) {
    let matrix = bpftime_tests::clang::build_loader(name);
    let shm = format!("bpftime-{name}-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = bpftime(&shm).args(["load", "--"]).arg(&matrix).output().unwrap();
    bpftime_tests::remove_region(&shm);
    assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    let ours = text(&out.stdout);
    for line in expected {
        assert!(ours.lines().any(|l| l == *line), "{name}: no line `{line}`:\n{ours}");
    }
    if is_root() {
        let kernel = Command::new(&matrix).output().unwrap();
        assert_eq!(ours, text(&kernel.stdout), "{name}: ours, then the kernel's");
    }
}

/// `BPF_MAP_CREATE` takes and refuses what the kernel does: every map type we keep, with each
/// map flag in turn (per-type flag masks, per-CPU maps without a NUMA node, fd arrays without
/// program access flags, LRU hashes always preallocated: `ENOTSUPP`), and object names
/// (letters, digits, `_` and `.`, NUL-terminated in 16 bytes). The same lines as the kernel's.
#[test]
fn map_creation_takes_and_refuses_what_the_kernel_does() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "map_create_matrix",
        &[
            "type 1 flags 0x1 name m: ok",
            "type 3 flags 0x80 name m: Invalid argument",
            "type 5 flags 0x4 name m: Invalid argument",
            "type 9 flags 0x1 name m: Unknown error 524",
            "type 2 flags 0x400 name m: ok",
            "type 1 flags 0 name bad-name: Invalid argument",
            "type 1 flags 0 name sixteen_chars_16: Invalid argument",
            "type 1 flags 0 name good.name_9: ok",
        ],
    );
}

/// Every map command of bpf(2) on a map of each type, as the kernel answers it: updates with
/// each flag (fd maps take none; `BPF_F_LOCK` needs a spin lock no value of ours has), lookups
/// (flags refused; a bloom filter's is by value), lookup-and-delete (`ENOTSUPP` where the
/// kernel has none; a stack trace's deletes), key walks, batches (hash maps by bucket, the
/// bucket count at the end; arrays, LPM tries and arrays of maps by key, the last key in
/// `out_batch`; `ENOSPC` with nothing copied), freeze. The same lines as the kernel's.
#[test]
fn map_commands_answer_what_the_kernel_answers() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "map_ops_matrix",
        &[
            "lpm_trie: create ok",
            "  lookup flags 8: Invalid argument",
            "  lookup batch after it: No such file or directory count 1 first key 10 out 20100000010",
        ],
    );
}

/// Opening uprobe events and attaching programs to them answer as the kernel's uprobe PMU
/// does: a missing, empty or non-regular path, an offset past the file's end, an odd semaphore
/// offset, neither process nor CPU, a too-small attr, a process that does not exist, fds that
/// are not kprobe-type programs. A relative path names the file it named when opened (the
/// program then runs on a call made after the loader changed directory). `BPF_TASK_FD_QUERY`
/// (what `bpftool perf` asks of every fd of every process) describes the probes as the kernel
/// does, with its errors for other fds.
#[test]
fn uprobe_events_open_and_attach_as_the_kernels_do() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "uprobe_open_matrix",
        &[
            "no such file: No such file or directory",
            "a directory: Invalid argument",
            "attach a socket filter: Invalid argument",
            "relative path: ok",
            "query the probe: ok, type 4, name as opened (length right), offset right, prog given",
            "query a file: ENOTSUPP",
        ],
    );
}

/// Helpers the kernel keeps for GPL-compatible programs (`bpf_trace_printk` here) are refused
/// to programs under other licenses, as the kernel refuses them: through the server (the same
/// answers as the kernel for each license) and in an object `bpftime load` reads.
#[test]
fn gpl_only_helpers_need_a_gpl_compatible_license_as_in_the_kernel() {
    let _serial = serial();
    matrix_matches_the_kernel("license_matrix", &["license 'Dual BSD/GPL': ok", "license 'Proprietary': Invalid argument"]);
    let shm = format!("bpftime-license-{}", std::process::id());
    let obj = bpftime_tests::clang::build_example("proprietary");
    assert!(bpftime(&shm).args(["shm", "create", "--size", "8M"]).output().unwrap().status.success());
    let load = bpftime(&shm).arg("load").arg(&obj).output().unwrap();
    bpftime_tests::remove_region(&shm);
    let said = text(&load.stderr);
    assert!(!load.status.success() && said.contains("cannot call GPL-restricted function bpf_trace_printk") && said.contains("Proprietary"), "{said}");
}

/// `BPF_PROG_LOAD` takes and refuses what the kernel does: its attributes (names, instruction
/// counts, program types and flags, the verifier log's level, buffer and size: a load whose
/// log does not fit fails with `ENOSPC`) and bodies its verifier refuses, with its errno
/// (`EINVAL` for a malformed program: bad jumps and opcodes, unknown helpers, falling off
/// the end, unreachable instructions; `EACCES` for an unsafe one: r0 unset at exit, a register
/// read before it is set, writes to r10, below the stack or into a kprobe's context).
#[test]
fn program_loads_take_and_refuse_what_the_kernel_does() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "prog_load_matrix",
        &[
            "a valid program: ok",
            "exit with r0 unset: Permission denied",
            "unreachable instructions: Invalid argument",
            "a log buffer of 10 bytes: No space left on device",
        ],
    );
}

/// `BPF_OBJ_GET_INFO_BY_FD` fills what the kernel fills, for maps and programs: the fields,
/// a program's tag (SHA-256 of its instructions less their map fds, as bpftool shows it), its
/// GPL compatibility and maps, buffers shorter than the struct (what fits) and longer ones
/// (`E2BIG` unless zeroed past it), fds that are not objects (`EINVAL`); a program's machine
/// code (length, bytes, functions); and each fd's `/proc/self/fdinfo` as the kernel writes it
/// (a map's `frozen` before and after `BPF_MAP_FREEZE`, a program's `prog_jited`, `memlock`).
#[test]
fn object_info_is_what_the_kernel_gives() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "obj_info_matrix",
        &[
            "prog with a map: ok tag 0bd0168676c7c779 nr_map_ids 1",
            "prog code: ok len>0 1 ksyms 1 func lens 1; function's length is the length 1, an address 1, code copied 1, insns pointer kept 1",
            "prog fdinfo: prog_jited:\t1",
            "map, frozen fdinfo: frozen:\t1",
            "not an object: Invalid argument",
        ],
    );
}

/// A libbpf loader reads each link's `/proc/self/fdinfo` as on the kernel (`link_fdinfo.c` on
/// `link_kinds.bpf.c`): file flags, link type, program tag, and what it probes (a uprobe's and
/// a uretprobe's file, offset and kind, a tracepoint's and a raw tracepoint's name, cookies).
#[test]
fn link_fdinfo_reads_as_the_kernels() {
    let _serial = serial();
    let (loader, obj) = (bpftime_tests::clang::build_loader("link_fdinfo"), build_example("link_kinds"));
    let shm = format!("bpftime-link-fdinfo-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).output().unwrap();
    bpftime_tests::remove_region(&shm);
    let ours = text(&out.stdout);
    assert!(out.status.success(), "{ours}{}", text(&out.stderr));
    for line in ["on_getpid_return event_type:\turetprobe", "on_openat tp_name:\tsys_enter_openat", "on_sys_exit link_type:\traw_tracepoint"] {
        assert!(ours.lines().any(|l| l == line), "no line `{line}`:\n{ours}");
    }
    if is_root() && bpftime_tests::kernel::tracefs_mounted() {
        let kernel = Command::new(&loader).arg(&obj).output().unwrap();
        assert_eq!(ours, text(&kernel.stdout), "ours, then the kernel's ({})", text(&kernel.stderr));
    }
}

/// `mmap` of map fds answers as the kernel's `bpf_map_mmap`: shared mappings only, ring
/// buffers writable at their consumer page only, arrays made mappable and within their pages,
/// frozen maps read-only, maps that cannot be mapped `ENOTSUPP`.
#[test]
fn map_mappings_answer_what_the_kernel_answers() {
    let _serial = serial();
    matrix_matches_the_kernel("mmap_matrix", &["ring producer, read-write: Operation not permitted", "frozen array, read-only: ok"]);
}

/// Objects by id and the id lists answer as the kernel's: open flags per object kind, ids
/// nobody has (`ENOENT`), walks from an id at or past `INT_MAX` (`EINVAL`).
#[test]
fn objects_by_id_answer_what_the_kernel_answers() {
    let _serial = serial();
    matrix_matches_the_kernel("id_matrix", &["map by its id, read-only: ok", "map ids after the last: Invalid argument"]);
}

/// Fd copies and closes keep objects as the kernel's references do: a map fd moved onto a
/// placeholder with `syscall(__NR_dup3)` (libbpf 1.4+), `fcntl(F_DUPFD_CLOEXEC)`, `dup2` onto
/// itself, `syscall(__NR_dup)`; a link that another loader opens by id and closes (`bpftool
/// link show`) stays.
#[test]
fn fd_copies_and_closes_keep_objects_as_the_kernel_does() {
    let _serial = serial();
    matrix_matches_the_kernel(
        "fd_matrix",
        &["map through the placeholder, its first fd closed: ok", "map after dup2 onto itself: ok", "the link by id after that: ok"],
    );
}

/// A ring buffer consumer gets its records where a loader's fds change under it, as on the
/// kernel: a ring made on the fd number of one closed with a record in it, and a child forked
/// after the consumer was set up (a loader that daemonises; threads do not survive a fork).
#[test]
fn ring_buffer_consumers_follow_their_fds_as_on_the_kernel() {
    let _serial = serial();
    matrix_matches_the_kernel("ring_reuse", &["second ring on the first's fd number: yes", "second ring: 1", "a forked child's poll: 1"]);
}

/// A program the kernel's verifier refuses (a lookup by key in a bloom filter, a map without
/// keys) fails for an unmodified libbpf loader under the server too, with our verifier's
/// reason and instruction. (It loads, since a kprobe-type program may be a CUDA kernel probe
/// and the GPU's verifier cannot know the map; attaching it to a uprobe is what fails.)
#[test]
fn a_program_the_kernel_refuses_fails_for_the_loader_with_the_reason() {
    let _serial = serial();
    let obj = bpftime_tests::clang::build_example("keyless_lookup");
    let loader = bpftime_tests::clang::build_loader("attach_all");
    let shm = format!("bpftime-keyless-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).stdin(std::process::Stdio::null()).output().unwrap();
    bpftime_tests::remove_region(&shm);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("helper 1 takes a key, and this map has none") && said.contains("cannot attach main_entry"), "{said}");
    if is_root() {
        let k = Command::new(&loader).arg(&obj).stdin(std::process::Stdio::null()).output().unwrap();
        let kernel = text(&k.stdout) + &text(&k.stderr);
        assert!(!k.status.success() && kernel.contains("invalid zero-sized read"), "the kernel's: {kernel}");
    }
}

/// bpftrace's `interval` probes (a CPU-clock perf event with a program attached): the server
/// runs the program in the loader's process on a timer, and the script prints and exits as on
/// the kernel; with `BEGIN` and `END` probes (run on demand with `BPF_PROG_TEST_RUN`).
#[test]
fn bpftrace_interval_probes_tick_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    // BEGIN and END: bpftrace runs them with BPF_PROG_TEST_RUN (the server runs them once,
    // in the loader's process).
    let script = "BEGIN { printf(\"begin\\n\"); @start = 7; } interval:ms:50 { @ticks++; if (@ticks == 5) { printf(\"ticks %d\\n\", @ticks); exit(); } } END { printf(\"end %d\\n\", @start); }";
    let shm = format!("bpftime-interval-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        bpftrace_result(&(text(&out.stdout) + &text(&out.stderr)))
    };
    let started = std::time::Instant::now();
    let ours =
        run(Command::new("timeout").arg("60").arg(env!("CARGO_BIN_EXE_bpftime")).args(["--shm", &shm, "load", "--"]).arg(&bpftrace).args(["-e", script]));
    assert!(ours.contains("begin\nticks 5\nend 7") && ours.contains("@ticks: 5"), "{ours}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "five 50 ms periods");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let kernel = run(Command::new("timeout").arg("60").arg(&bpftrace).args(["-e", script]));
        assert_eq!(ours, kernel, "the same script on the kernel");
    }
}

/// bpftrace's `profile` probes (a CPU-clock perf event on each CPU, asked for a frequency or
/// for a period): the programs run in the traced process, on the thread whose CPU time ran
/// out, with its registers (always user mode here: a sample is taken as the thread goes back
/// to its code), as the kernel samples whatever runs on each CPU. Two threads spinning for a
/// second of CPU time each are sampled about 99 times a second each, as on the kernel; the
/// loader runs none of it (it used to run them itself, on a timer, as if it were the target).
/// The target handles the signal we sample with itself too, and gets every one it raises.
#[test]
fn bpftrace_profile_probes_sample_the_traced_threads_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let spin = build_target("spin", false);
    let dir = std::env::temp_dir().join(format!("bpftime-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (@samples, @user, samples of each thread)
    let counts = |out: &str| -> (u64, u64, Vec<u64>) {
        let value = |key: &str| out.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0);
        let threads = out.lines().filter(|l| l.starts_with("@threads[")).filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
        (value("@samples: "), value("@user: "), threads)
    };
    // By frequency (profile:hz), and by period (profile:ms, which takes CPU 0's event for an
    // `interval` tick until CPU 1's shows a series).
    for probe in ["profile:hz:99", "profile:ms:10"] {
        let script =
            format!("{probe} /comm == \"spin\"/ {{ @samples = count(); @threads[tid] = count(); if (reg(\"ip\") < 0x800000000000) {{ @user = count(); }} }}");
        let shm = format!("bpftime-profile-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&bpftrace).args(["-e", &script]);
        let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&spin).args(["1000", "2", "signals"]), &dir.join("ours"), true);
        bpftime_tests::remove_region(&shm);
        let (samples, user, threads) = counts(&out);
        // 2 s of CPU time at 99 a second (100 for 10 ms), give or take a machine's noise.
        assert!((140..=260).contains(&samples), "{probe}: {samples} samples:\n{out}");
        assert_eq!(user, samples, "{probe}: user-mode registers:\n{out}");
        // (Each thread's share follows the CPU it got: on two vCPUs shared with other tests one
        // thread has had under a fifth, 34 of 180.)
        assert!(threads.len() == 2 && threads.iter().all(|&n| n >= samples / 10), "{probe}: both threads sampled:\n{out}");
        if is_root() {
            let mut kernel = Command::new(&bpftrace);
            kernel.args(["-e", &script]);
            let k = tool_session(kernel, None, Command::new(&spin).args(["1000", "2", "signals"]), &dir.join("kernel"), true);
            let (kernel_samples, _, kernel_threads) = counts(&k);
            assert!(kernel_threads.len() == 2 && (140..=260).contains(&kernel_samples), "{probe}: the kernel's:\n{k}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    let o = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map_err(|_| ())?;
    let p = text(&o.stdout).trim().to_string();
    if o.status.success() && !p.is_empty() {
        Ok(PathBuf::from(p))
    } else {
        Err(())
    }
}

/// `funclatency -p PID :FUNCTION`: a uprobe opened for one process attaches there only, as in
/// the kernel; another process running the same binary is not counted.
#[test]
fn a_uprobe_for_one_pid_counts_that_process_only() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/funclatency", "libbpf-tools") else { return };
    let calls = build_target("calls", false);
    let shm = format!("bpftime-pid-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let agent = Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime.so");
    let spawn = |n: &str| {
        Command::new(&calls)
            .args([n, "1", "wait"])
            .env("LD_PRELOAD", &agent)
            .env("BPFTIME_SHM", &shm)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("3000"), spawn("2000"));
    let out = std::env::temp_dir().join(format!("bpftime-pid-{}.out", std::process::id()));
    let f = std::fs::File::create(&out).unwrap();
    let mut t = bpftime(&shm)
        .args(["load", "--"])
        .arg(&tool)
        .args(["-d", "4", "-p", &a.id().to_string(), ":add"])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    // The tool attaches, then the agents' link watchers (100 ms) see the links.
    wait_attached(Some(&shm), 0);
    for c in [&mut a, &mut b] {
        c.stdin.take().unwrap().write_all(b"x").unwrap();
        assert!(c.wait().unwrap().success());
    }
    t.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(histogram_total(&text), 3000, "only the first process's add() calls:\n{text}");
    let _ = std::fs::remove_file(&out);
    bpftime_tests::remove_region(&shm);
}

/// Debian's libbpf-tools `bashreadline` (uretprobe on bash's readline, a perf buffer) prints the
/// command lines an interactive bash reads, as it does on the kernel.
#[test]
fn libbpf_tools_bashreadline_prints_what_the_kernel_prints() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/bashreadline", "libbpf-tools") else { return };
    // An interactive bash (readline needs a terminal: `script` gives it one).
    let bash = |agent: Option<(&Path, &str)>| {
        let mut c = Command::new("sh");
        c.arg("-c").arg("printf 'echo hello\\necho world\\nexit\\n' | script -qfc 'bash --norc -i' /dev/null > /dev/null 2>&1");
        if let Some((agent, shm)) = agent {
            c.env("LD_PRELOAD", agent).env("BPFTIME_SHM", shm);
        }
        c
    };
    // TIME and PID columns differ between runs: the commands are what must match.
    let commands = |out: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| !l.starts_with("TIME"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(2).map(|_| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" ")))
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("bpftime-bashreadline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bashreadline-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let agent = Path::new(env!("CARGO_BIN_EXE_bpftime")).with_file_name("libbpftime.so");
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool);
    let out = tool_session(ours, Some(&shm), &mut bash(Some((&agent, &shm))), &dir.join("ours"), true);
    let ours = commands(&out);
    assert_eq!(ours, ["echo hello", "echo world", "exit"], "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let out = tool_session(Command::new(&tool), None, &mut bash(None), &dir.join("kernel"), true);
        assert_eq!(ours, commands(&out), "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libbpf-tools `gethostlatency` (uprobes and uretprobes on libc's getaddrinfo and
/// friends, a perf buffer) sees each resolution of a target, as on the kernel.
#[test]
fn libbpf_tools_gethostlatency_sees_what_the_kernel_sees() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/gethostlatency", "libbpf-tools") else { return };
    let resolve = build_target("resolve", false);
    // One line per call: TIME PID COMM LATms HOST; the COMM column is the target's name.
    let calls = |out: &str| out.lines().filter(|l| l.split_whitespace().nth(2) == Some("resolve")).count();
    let dir = std::env::temp_dir().join(format!("bpftime-gethostlatency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-gethostlatency-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&resolve).arg("3"), &dir.join("ours"), true);
    assert_eq!(calls(&out), 3, "{out}");
    assert_eq!(out.matches("localhost").count(), 3, "the host names read in the target: {out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let out = tool_session(Command::new(&tool), None, Command::new(&resolve).arg("3"), &dir.join("kernel"), true);
        assert_eq!(calls(&out), 3, "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftool (unmodified, from apt) under the syscall server walks the region as it walks the
/// kernel: `prog show` lists our programs with their machine code sizes, `map show` our maps, `map dump` their values,
/// `prog dump xlated` a program's instructions.
#[test]
fn bpftool_shows_and_dumps_the_region() {
    let _serial = serial();
    let Some(bpftool) = installed_or_skip("/usr/sbin/bpftool", "bpftool") else { return };
    let shm = format!("bpftime-bpftool-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    assert!(bpftime(&shm).arg("load").arg(build_example("uprobe_calls")).output().unwrap().status.success());
    let calls = build_target("calls", false);
    assert!(bpftime(&shm).args(["start", "--"]).arg(&calls).arg("7").output().unwrap().status.success());
    let tool = |args: &[&str]| {
        let o = bpftime(&shm).args(["load", "--"]).arg(&bpftool).args(args).output().unwrap();
        assert!(o.status.success(), "bpftool {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let progs = tool(&["prog", "show"]);
    for name in ["on_add", "on_add_return", "on_fact", "on_fact_return"] {
        assert!(progs.contains(&format!("name {name} ")), "{progs}");
    }
    // Compiled once at load (the code cache): bpftool shows each program's machine code size,
    // and, from each fd's fdinfo, its memory.
    assert_eq!(progs.matches("  jited ").count(), 4, "{progs}");
    assert_eq!(progs.matches("  memlock 4096B").count(), 4, "{progs}");
    let maps = tool(&["map", "show"]);
    assert!(maps.contains("array  name stats  flags 0x0") && maps.contains("max_entries 8  memlock "), "{maps}");
    // stats[0]: add() calls; keys and values formatted from the object's BTF, which
    // `bpftime load` keeps in the region as a libbpf loader's is.
    let dump = tool(&["map", "dump", "name", "stats"]);
    assert!(dump.contains("\"key\": 0,\n        \"value\": 7\n"), "{dump}");
    assert_eq!(dump.matches("\"key\": ").count(), 8, "{dump}");
    assert!(tool(&["map", "show", "name", "stats"]).contains("btf_id "));
    // `prog dump xlated`: the instructions as stored, maps by id, helpers by name.
    let xlated = tool(&["prog", "dump", "xlated", "name", "on_add"]);
    let stats_id = tool(&["map", "show", "name", "stats"]).split(':').next().unwrap().trim().to_string();
    assert!(xlated.contains(&format!("= map[id:{stats_id}]")), "{xlated}");
    assert!(xlated.contains("call bpf_map_lookup_elem#1"), "{xlated}");
    // Its function and source lines, from the object's .BTF.ext as libbpf would give them.
    assert!(xlated.starts_with("int on_add(struct pt_regs * ctx):\n; int BPF_KPROBE(on_add, long a, long b)\n"), "{xlated}");
    assert!(xlated.trim_end().ends_with("exit"), "{xlated}");
    bpftime_tests::remove_region(&shm);
}

/// `bpftool perf` (`BPF_TASK_FD_QUERY` on every fd of every process) lists a running loader's
/// uprobes as on the kernel: kind, file and offset per perf event fd of the loader's.
#[test]
fn bpftool_perf_lists_a_loaders_probes_as_on_the_kernel() {
    let _serial = serial();
    let Some(bpftool) = installed_or_skip("/usr/sbin/bpftool", "bpftool") else { return };
    let (loader, obj, calls) = (build_loader("count_calls"), build_example("loader_calls"), build_target("calls", false));
    // `pid P  fd F: prog_id I  uprobe  filename FILE  offset O`, without the numbers that
    // differ: for the loader's pid only, in fd order.
    let probes = |out: &str, pid: u32| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with(&format!("pid {pid} ")))
            .filter_map(|l| l.split_once("prog_id ").and_then(|(_, rest)| rest.split_once(' ')).map(|(_, rest)| rest.trim().to_string()))
            .collect()
    };
    let shm = format!("bpftime-bpftool-perf-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let ours = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
    let pid = child_of(ours.0.id()) as u32;
    let listed = bpftime(&shm).args(["load", "--"]).arg(&bpftool).arg("perf").output().unwrap();
    loader_finished(ours);
    bpftime_tests::remove_region(&shm);
    let ours = probes(&text(&listed.stdout), pid);
    let expected = format!("filename {}  offset", calls.display());
    assert!(ours.len() == 3 && ours.iter().all(|l| l.contains(&expected)), "{}{}", text(&listed.stdout), text(&listed.stderr));
    if is_root() {
        let kernel = loader_attached(Command::new(&loader).arg(&obj).arg(&calls));
        let pid = kernel.0.id();
        let listed = Command::new(&bpftool).arg("perf").output().unwrap();
        loader_finished(kernel);
        assert_eq!(ours, probes(&text(&listed.stdout), pid), "the kernel's:\n{}", text(&listed.stdout));
    }
}

/// bpftool (unmodified) formats a libbpf loader's maps from their BTF as it does on the kernel:
/// the loader's BTF is kept in the region with each map's key and value types, so `map show`
/// names the BTF, `map dump` prints keys and values field by field (a struct-valued array, in
/// order; a hash, whose order is the kernel's own, as a set), and `btf dump` prints the types;
/// with the program's func_info and line_info, `prog dump xlated` names its functions and
/// shows its source lines, and `prog show` its BTF, load time and owner.
#[test]
fn bpftool_formats_a_loaders_maps_and_programs_from_their_btf_as_on_the_kernel() {
    let _serial = serial();
    let Some(bpftool) = installed_or_skip("/usr/sbin/bpftool", "bpftool") else { return };
    let obj = build_example("map_walks");
    let calls = build_target("calls", false);
    let loader = build_loader("count_calls");
    // What bpftool shows while the loader waits, ids left out.
    let look = |tool: &dyn Fn(&[&str]) -> String| -> Vec<String> {
        let show = tool(&["map", "show", "name", "walk_totals"]);
        let btf_id = show.split("btf_id ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no BTF named: {show}")).to_string();
        let mut by_arg: Vec<String> = tool(&["-j", "map", "dump", "name", "by_arg"])
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split("},{")
            .map(|e| e.trim_matches(|c| c == '{' || c == '}').to_string())
            .collect();
        by_arg.sort();
        // The program's functions and source lines (the kernel's rewrites change the
        // instructions between them, not their order).
        let source: Vec<String> =
            tool(&["prog", "dump", "xlated", "name", "on_add"]).lines().filter(|l| l.starts_with("; ") || l.ends_with("):")).map(str::to_string).collect();
        let prog = tool(&["prog", "show", "name", "on_add"]);
        let prog_btf = prog.split("btf_id ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no BTF named: {prog}"));
        assert_eq!(prog_btf, btf_id, "the program's BTF and its maps'");
        assert!(prog.contains("loaded_at ") && prog.contains("  uid 0"), "{prog}");
        vec![
            show.lines().next().unwrap_or("").split_once(':').map_or(String::new(), |(_, rest)| rest.to_string()),
            tool(&["map", "dump", "name", "walk_totals"]),
            by_arg.join("\n"),
            tool(&["btf", "dump", "id", &btf_id]),
            source.join("\n"),
        ]
    };
    let shm = format!("bpftime-btf-dump-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let waiting = loader_attached(bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls));
    let t = bpftime(&shm).args(["start", "--"]).arg(&calls).arg("300").output().unwrap();
    assert!(t.status.success(), "{}", text(&t.stderr));
    let ours = look(&|args| {
        let o = bpftime(&shm).args(["load", "--"]).arg(&bpftool).args(args).output().unwrap();
        assert!(o.status.success(), "bpftool {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    });
    loader_finished(waiting);
    bpftime_tests::remove_region(&shm);
    assert!(ours[1].contains("\"value\": {\n            \"keys\": "), "struct fields by name:\n{}", ours[1]);
    assert!(ours[3].contains("STRUCT 'walk' size=32 vlen=4"), "{}", ours[3]);
    assert!(ours[4].starts_with("int on_add(struct pt_regs * ctx):\n; int BPF_KPROBE(on_add, "), "{}", ours[4]);
    assert!(ours[4].contains("\nlong visit_hash(void * map, __u32 * key, __u64 * value, struct walk * w):\n"), "{}", ours[4]);
    if !is_root() {
        return println!("skipping the kernel comparison: it needs root");
    }
    let waiting = loader_attached(Command::new(&loader).arg(&obj).arg(&calls));
    assert!(Command::new(&calls).arg("300").output().unwrap().status.success());
    let theirs = look(&|args| {
        let o = Command::new(&bpftool).args(args).output().unwrap();
        assert!(o.status.success(), "bpftool {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    });
    loader_finished(waiting);
    let what = ["map show", "map dump of an array of structs", "map dump of a hash", "btf dump", "prog dump xlated: functions and source lines"];
    for (what, (o, k)) in what.iter().zip(ours.iter().zip(&theirs)) {
        assert_eq!(o, k, "{what}: ours, then the kernel's");
    }
}

/// libbpf's USDT support, unmodified (`bpf_program__attach_usdt`: ELF notes, its spec maps,
/// `BPF_USDT` argument decoding, attach cookies, a uprobe in the middle of a function): the
/// same counts and argument sums as on the kernel, for a probe that always fires and for one
/// the application guards with its semaphore (raised while a probe is attached).
#[test]
fn a_libbpf_usdt_loader_counts_what_the_kernel_counts() {
    let _serial = serial();
    let loader = build_loader("usdt_count");
    let obj = build_example("loader_usdt");
    let usdt = build_target("usdt", false);
    for probe in ["tick", "guarded"] {
        let shm = format!("bpftime-usdt-{probe}-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&usdt).args(["bpftime", probe]);
        let (ours_out, _) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&usdt).arg("300"));
        assert!(
            ours_out.contains("stats[0] = 300\n") && ours_out.contains("stats[1] = 44850\n") && ours_out.contains("stats[2] = 89700\n"),
            "{probe}: {ours_out}"
        );
        bpftime_tests::remove_region(&shm);
        if is_root() {
            let mut kernel = Command::new(&loader);
            kernel.arg(&obj).arg(&usdt).args(["bpftime", probe]);
            let (kernel_out, _) = session(kernel, Command::new(&usdt).arg("300"));
            assert_eq!(ours_out, kernel_out, "{probe}: the same loader on the kernel");
        }
    }
}

/// A skeleton-based libbpf loader (`bpftool gen skeleton`): a `const volatile` setting written
/// through `skel->rodata` before loading, global data mapped by the skeleton, a per-pid hash
/// map walked with get-next-key. The target's malloc() count is the kernel's.
#[test]
fn a_skeleton_loader_counts_what_the_kernel_counts() {
    let _serial = serial();
    let Some(bpftool) = installed_or_skip("/usr/sbin/bpftool", "bpftool") else { return };
    let obj = build_example("malloc_per_pid");
    let dir = bpftime_tests::repo_root().join("target/loaders");
    std::fs::create_dir_all(&dir).unwrap();
    let skel = Command::new(&bpftool).args(["gen", "skeleton"]).arg(&obj).output().unwrap();
    assert!(skel.status.success(), "bpftool gen skeleton: {}", text(&skel.stderr));
    std::fs::write(dir.join("malloc_per_pid.skel.h"), &skel.stdout).unwrap();
    let loader = dir.join("malloc_per_pid");
    let o = Command::new("cc")
        .args(["-O2", "-I"])
        .arg(&dir)
        .arg(bpftime_tests::repo_root().join("examples/loaders/malloc_per_pid.c"))
        .arg("-o")
        .arg(&loader)
        .arg("-lbpf")
        .output()
        .unwrap();
    assert!(o.status.success(), "cc: {}", text(&o.stderr));
    let workload = build_target("malloc_workload", false);
    let shm = format!("bpftime-skeleton-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg("malloc_workl");
    let (ours_out, _) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&workload).arg("2000"));
    assert!(ours_out.starts_with("attached 1\n1 processes\nmalloc calls: "), "{ours_out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&loader);
        kernel.arg("malloc_workl");
        let (kernel_out, _) = session(kernel, Command::new(&workload).arg("2000"));
        assert_eq!(ours_out, kernel_out, "the same loader on the kernel");
    }
}

/// A function-latency histogram loader (uprobe + uretprobe, per-thread start times, log2
/// buckets): every call lands in a bucket, as on the kernel (the buckets themselves differ:
/// the kernel's probes take microseconds).
#[test]
fn a_latency_histogram_loader_times_every_call_like_the_kernel() {
    let _serial = serial();
    let loader = build_loader("func_latency");
    let obj = build_example("loader_latency");
    let calls = build_target("calls", false);
    let total = |out: &str| out.lines().find_map(|l| l.strip_prefix("total ")).map(str::to_string);
    let shm = format!("bpftime-latency-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&loader).arg(&obj).arg(&calls).arg("add");
    let (ours_out, _) = session(ours, bpftime(&shm).args(["start", "--"]).arg(&calls).args(["3000", "2"]));
    assert_eq!(total(&ours_out).as_deref(), Some("6000"), "two threads x 3000 add() calls:\n{ours_out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&loader);
        kernel.arg(&obj).arg(&calls).arg("add");
        let (kernel_out, _) = session(kernel, Command::new(&calls).args(["3000", "2"]));
        assert_eq!(total(&kernel_out).as_deref(), Some("6000"), "the kernel:\n{kernel_out}");
    }
}

/// Debian's libbpf-tools `opensnoop` (unmodified: `tracepoint/syscalls/sys_enter_openat` and
/// `sys_exit_openat`, CO-RE against the kernel's BTF, a perf buffer) attached through the
/// syscall server: the traced process's opens of its marker file are printed with their file
/// descriptors, as many as the kernel's tracepoints print (libc, syscall(3), inline `syscall`,
/// a thread, a forked child). Needs tracefs (mounted here when it is not): libbpf reads the
/// events' ids there.
#[test]
fn libbpf_tools_opensnoop_sees_every_open_like_the_kernel() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/opensnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() {
        return;
    }
    let opens = build_target("opens", false);
    build_target("opener", true);
    let marker_lines = |out: &str| out.lines().filter(|l| l.contains("/tmp/bpftime-open-marker-") && l.split_whitespace().nth(3) == Some("0")).count();
    let dir = std::env::temp_dir().join(format!("bpftime-opensnoop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-opensnoop-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).args(["-d", "5"]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&opens).arg("10"), &dir.join("ours"), false);
    // 100 opens and the one that creates the marker, all succeeding.
    assert_eq!(marker_lines(&out), 101, "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&tool);
        kernel.args(["-d", "5"]);
        let out = tool_session(kernel, None, Command::new(&opens).arg("10"), &dir.join("kernel"), false);
        assert_eq!(marker_lines(&out), 101, "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libbpf-tools `execsnoop -x` (unmodified: `sys_enter_execve` keeps the arguments in
/// a hash map, `sys_exit_execve` prints them with the result through a perf buffer; `-x` prints
/// failed execs too) through the syscall server, on a dash script, whose commands run in `vfork`
/// children, `posix_spawn`s (`system`, clone3 with `CLONE_VFORK`; one whose child resets every
/// signal's action, SIGSYS's included, which ours keeps) and a bash fork child: every
/// exec is printed with its arguments and result as on the kernel, failed ones in vfork children
/// included. A vfork child ran without interception, so its exec went unseen (only the script's
/// own exec was printed); then a successful one was reported by the image it started, but a
/// failed one not at all: a vfork child now turns interception on for itself. Its map takes
/// 84 MiB: the region `shm create` makes by default holds it.
#[test]
fn libbpf_tools_execsnoop_sees_the_execs_of_vfork_children_like_the_kernel() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/execsnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() {
        return;
    }
    let script = "/bin/true bpftime-exec-marker-1; /bin/echo bpftime-exec-marker-2 > /dev/null; bash -c '/bin/true bpftime-exec-marker-3'; python3 -c 'import os, signal; os.system(\"/bin/true bpftime-exec-marker-4\"); os.system(\"/nonexistent/bpftime-exec-marker-6 2>/dev/null\"); p = os.posix_spawn(\"/bin/true\", [\"/bin/true\", \"bpftime-exec-marker-7\"], os.environ, setsigdef=[s for s in signal.valid_signals() if s not in (9, 19)]); os.waitpid(p, 0)'; /nonexistent/bpftime-exec-marker-5 2>/dev/null; true";
    let marked = |out: &str| {
        let mut lines: Vec<String> = out
            .lines()
            .filter(|l| l.contains("bpftime-exec-marker-") && !l.contains(" -c "))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // PCOMM, RET and ARGS (not the ids).
                format!("{} {} {}", f[0], f[3], f[4..].join(" "))
            })
            .collect();
        lines.sort();
        lines
    };
    let want = [
        "echo 0 /bin/echo bpftime-exec-marker-2",
        "sh -2 /nonexistent/bpftime-exec-marker-5",
        "sh -2 /nonexistent/bpftime-exec-marker-6",
        "true 0 /bin/true bpftime-exec-marker-1",
        "true 0 /bin/true bpftime-exec-marker-3",
        "true 0 /bin/true bpftime-exec-marker-4",
        "true 0 /bin/true bpftime-exec-marker-7",
    ];
    let dir = std::env::temp_dir().join(format!("bpftime-execsnoop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-execsnoop-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).arg("-x");
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--", "/bin/sh", "-c", script]), &dir.join("ours"), true);
    assert_eq!(marked(&out), want, "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&tool);
        kernel.arg("-x");
        let out = tool_session(kernel, None, Command::new("/bin/sh").args(["-c", script]), &dir.join("kernel"), true);
        assert_eq!(marked(&out), want, "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libbpf-tools `mountsnoop` and `sigsnoop -k` (unmodified) through the syscall
/// server print what they print on the kernel. mountsnoop is the case of code libbpf leaves
/// for the verifier to prove dead: with ring buffers available it does not create its
/// `heap` map and turns the references to it (behind a `bpf_core_type_exists` branch) into
/// calls of a helper that does not exist; it reads the mount namespace through
/// `bpf_get_current_task()->nsproxy->mnt_ns->ns.inum` and traces `umount2` under its kernel
/// event name, `sys_enter_umount`. bpftrace's killsnoop.bt prints the same signals.
#[test]
fn libbpf_tools_mountsnoop_and_sigsnoop_print_what_the_kernel_prints() {
    let _serial = serial();
    let Some(mountsnoop) = installed_or_skip("/usr/sbin/mountsnoop", "libbpf-tools") else { return };
    let Some(sigsnoop) = installed_or_skip("/usr/sbin/sigsnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bpftime-mountsnoop-{}", std::process::id()));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.display();
    // A mount, its umount, a mount that fails; without privileges all three fail, alike here
    // and on the kernel.
    let mounts = format!("mount -t tmpfs -o size=1m bpftime-test {m}; umount {m}; mount -t no-such-fs bpftime-test {m}; true");
    // Signals through kill(2): two to processes that do not exist, one to itself (ignored).
    let kills = "trap '' USR1; kill -USR1 $$; kill -USR2 2147480000; kill -TERM 2147480001; true";
    // mountsnoop: COMM, MNT_NS and CALL of the lines about our directory (PID and TID differ).
    let mount_lines = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains(&*m.to_string()))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {}", w[0], w[3], w[4..].join(" "))
            })
            .collect()
    };
    // sigsnoop: SIG, RESULT and whom (itself, or the target pid) of bash's signals.
    let signal_lines = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 6 && w[2] == "bash" && (w[1] == w[4] || w[4].starts_with("214748000"))).then(|| {
                    let whom = if w[1] == w[4] { "self" } else { w[4] };
                    format!("{} {whom} {}", w[3], w[5])
                })
            })
            .collect()
    };
    let mut ours = vec![];
    for (tool, script) in [(&mountsnoop, &mounts), (&sigsnoop, &kills.to_string())] {
        let shm = format!("bpftime-mountsnoop-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
        let mut cmd = bpftime(&shm);
        cmd.args(["load", "--"]).arg(tool);
        if tool == &sigsnoop {
            cmd.arg("-k");
        }
        let out = tool_session(cmd, Some(&shm), bpftime(&shm).args(["start", "--", "bash", "-c", script]), &dir.join("ours"), true);
        bpftime_tests::remove_region(&shm);
        ours.push(out);
    }
    let (mount_ours, signal_ours) = (mount_lines(&ours[0]), signal_lines(&ours[1]));
    assert_eq!(mount_ours.len(), 3, "{}", ours[0]);
    assert_eq!(signal_ours, ["10 self 0", "12 2147480000 -3", "15 2147480001 -3"], "{}", ours[1]);
    // bpftrace's own killsnoop.bt: its tracepoint argument structs come from the kernel's BTF,
    // which bpftrace reads through bpf() (BTF object 1), so the server must give it.
    let killsnoop_bt = Path::new("/usr/sbin/killsnoop.bt");
    let bpftrace = which("bpftrace").ok().filter(|_| killsnoop_bt.exists());
    if let Some(bpftrace) = &bpftrace {
        let shm = format!("bpftime-killsnoop-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        let mut cmd = bpftime(&shm);
        cmd.args(["load", "--"]).arg(bpftrace).arg(killsnoop_bt);
        let out = tool_session(cmd, Some(&shm), bpftime(&shm).args(["start", "--", "bash", "-c", kills]), &dir.join("ours-bt"), true);
        bpftime_tests::remove_region(&shm);
        assert_eq!(signal_lines(&out), signal_ours, "killsnoop.bt:\n{out}");
        if is_root() {
            let mut k = Command::new(bpftrace);
            k.arg(killsnoop_bt);
            let out = tool_session(k, None, Command::new("bash").args(["-c", kills]), &dir.join("kernel-bt"), true);
            assert_eq!(signal_lines(&out), signal_ours, "killsnoop.bt on the kernel:\n{out}");
        }
    }
    if is_root() {
        let out = tool_session(Command::new(&mountsnoop), None, Command::new("bash").args(["-c", &mounts]), &dir.join("kernel"), true);
        assert_eq!(mount_ours, mount_lines(&out), "the kernel's:\n{out}\nours:\n{}", ours[0]);
        let mut k = Command::new(&sigsnoop);
        k.arg("-k");
        let out = tool_session(k, None, Command::new("bash").args(["-c", kills]), &dir.join("kernel"), true);
        assert_eq!(signal_ours, signal_lines(&out), "the kernel's:\n{out}");
    }
    let _ = std::process::Command::new("umount").arg(&mnt).output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libbpf-tools `javagc -p PID` on a JVM (OpenJDK's `libjvm.so` USDT probes
/// `mem__pool__gc__begin/end`, attached through the syscall server by pid, to a process that
/// started before its loader): every collection is timed, as on the kernel.
#[test]
fn libbpf_tools_javagc_times_a_jvms_collections_like_the_kernel() {
    let _serial = serial();
    let Some(javagc) = installed_or_skip("/usr/sbin/javagc", "libbpf-tools") else { return };
    let (Ok(java), Ok(javac)) = (which("java"), which("javac")) else {
        println!("skipping: no JDK (java, javac)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("bpftime-javagc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = bpftime_tests::repo_root().join("examples/java/Gc.java");
    let o = Command::new(&javac).arg("-d").arg(&dir).arg(&src).output().unwrap();
    assert!(o.status.success(), "javac: {}", text(&o.stderr));
    // The JVM (under `start` or alone) first, then javagc for its pid until it has exited.
    let session = |jvm: &mut Command, shm: Option<&str>| -> String {
        let j = jvm.stdout(Stdio::piped()).spawn().unwrap();
        let pid = match shm {
            Some(_) => child_of(j.id()),
            None => j.id() as i32,
        };
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut tool = match shm {
            Some(shm) => {
                let mut c = Command::new("timeout");
                c.args(["-s", "INT", "12", env!("CARGO_BIN_EXE_bpftime"), "--shm", shm, "load", "--"]).arg(&javagc);
                c
            }
            None => {
                let mut c = Command::new("timeout");
                c.args(["-s", "INT", "12"]).arg(&javagc);
                c
            }
        };
        let t = tool.args(["-p", &pid.to_string()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = j.wait_with_output().unwrap();
        assert!(out.status.success() && text(&out.stdout).contains("done"), "the JVM: {}", text(&out.stdout));
        let t = t.wait_with_output().unwrap();
        let lines = text(&t.stdout) + &text(&t.stderr);
        lines.lines().filter(|l| l.split_whitespace().nth(2) == Some(&pid.to_string())).map(|l| format!("{l}\n")).collect::<String>() + "--\n" + &lines
    };
    let gcs = |out: &str| out.split("--\n").next().unwrap_or("").lines().count();
    let shm = format!("bpftime-javagc-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create", "--size", "256M"]).output().unwrap().status.success());
    let ours = session(bpftime(&shm).args(["start", "--"]).arg(&java).arg("-cp").arg(&dir).args(["Gc", "6000"]), Some(&shm));
    bpftime_tests::remove_region(&shm);
    assert!(gcs(&ours) >= 5, "five System.gc() at least:\n{ours}");
    if is_root() {
        let kernel = session(Command::new(&java).arg("-cp").arg(&dir).args(["Gc", "6000"]), None);
        assert_eq!(gcs(&ours), gcs(&kernel), "the kernel's:\n{kernel}\nours:\n{ours}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace's output (to `out`) for `script` run by `bpftime load` on region `shm` (made
/// afresh) while `target ARGS` runs under `bpftime start`, ended by SIGINT.
fn bpftrace_under_bpftime(bpftrace: &Path, script: &str, shm: &str, target: &std::ffi::OsStr, args: &[&str], out: &Path) -> String {
    bpftime_tests::remove_region(shm);
    assert!(bpftime(shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut tool = bpftime(shm);
    tool.args(["load", "--"]).arg(bpftrace).args(["-e", script]);
    tool_session(tool, Some(shm), bpftime(shm).args(["start", "--"]).arg(target).args(args), out, true)
}

/// Calls whose counts vary from run to run of a threaded program, on the kernel too: `futex`
/// (contention), and `mmap`, `mprotect` and `munmap` (glibc reuses a finished thread's stack
/// when it is free in time, and trims and grows a thread's malloc arena by where the kernel put
/// it).
const VARYING: &[u64] = &[9, 10, 11, 202];

/// bpftrace, where system call tracepoints can be named (tracefs mounted: libbpf reads their
/// ids there); else None, having said why.
fn bpftrace_with_tracefs() -> Option<std::path::PathBuf> {
    let Ok(bpftrace) = which("bpftrace") else {
        eprintln!("skipped: no bpftrace");
        return None;
    };
    if !bpftime_tests::kernel::tracefs_mounted() {
        eprintln!("skipped: tracefs is not mounted");
        return None;
    }
    Some(bpftrace)
}

/// bpftrace, where it can run beside the kernel's tracepoints for comparison (installed, root,
/// tracefs mounted); else None, having said why.
fn bpftrace_beside_the_kernel() -> Option<std::path::PathBuf> {
    let bpftrace = bpftrace_with_tracefs()?;
    if !is_root() {
        eprintln!("skipped: needs root (compared with the kernel)");
        return None;
    }
    Some(bpftrace)
}

/// bpftrace's output for `script` while `target ARGS` runs, under bpftime (in a region of its
/// own, removed after) and on the kernel: (ours, the kernel's), kept in `dir` as `NAME-ours` and
/// `NAME-kernel`.
fn bpftrace_ours_and_the_kernels(bpftrace: &Path, script: &str, dir: &Path, name: &str, target: &Path, args: &[&str]) -> (String, String) {
    let shm = format!("bpftime-bpftrace-{name}-{}", std::process::id());
    let ours = bpftrace_under_bpftime(bpftrace, script, &shm, target.as_os_str(), args, &dir.join(format!("{name}-ours")));
    bpftime_tests::remove_region(&shm);
    let mut kernel = Command::new(bpftrace);
    kernel.args(["-e", script]);
    let kernel = tool_session(kernel, None, Command::new(target).args(args), &dir.join(format!("{name}-kernel")), true);
    (ours, kernel)
}

/// The counts of bpftrace map `@MAP[NUMBER]: COUNT` in its output (`map` "" for `@[...]`).
fn counts_by_number(out: &str, map: &str) -> std::collections::BTreeMap<u64, u64> {
    out.lines()
        .filter_map(|l| {
            let (nr, n) = l.strip_prefix(&format!("@{map}["))?.split_once("]: ")?;
            Some((nr.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect()
}

/// Asserts that system call counts by number are the kernel's: equal, but for the calls in
/// `fewer`, which may be fewer, never more, and those in `varying` (counts that differ from run
/// to run on the kernel too); and no call the kernel did not see.
fn assert_counts_like_the_kernels(
    ours: &std::collections::BTreeMap<u64, u64>,
    kernel: &std::collections::BTreeMap<u64, u64>,
    fewer: &[u64],
    varying: &[u64],
    context: &str,
) {
    for (nr, k) in kernel {
        let o = ours.get(nr).copied().unwrap_or(0);
        if varying.contains(nr) {
            continue;
        }
        if fewer.contains(nr) {
            assert!(o <= *k, "call {nr}: ours {o}, the kernel's {k}\n{context}");
        } else {
            assert_eq!(o, *k, "call {nr}\n{context}");
        }
    }
    assert!(ours.keys().all(|nr| kernel.contains_key(nr) || varying.contains(nr)), "{context}");
}

/// bpftrace (unmodified) on system call tracepoints, `syscalls:sys_enter_openat` and
/// `raw_syscalls:sys_exit` (every call, filtered by number), counts the target's opens as it
/// does on the kernel.
#[test]
fn bpftrace_syscall_tracepoints_count_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_with_tracefs() else { return };
    let opens = build_target("opens", false);
    build_target("opener", true);
    let script = r#"tracepoint:syscalls:sys_enter_openat /comm == "opens"/ { @enter = count(); } tracepoint:raw_syscalls:sys_exit /comm == "opens" && args->id == 257/ { @exits = count(); }"#;
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-sys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-sys-{}", std::process::id());
    let out = bpftrace_result(&bpftrace_under_bpftime(&bpftrace, script, &shm, opens.as_os_str(), &["10"], &dir.join("ours")));
    // The marker's 101 opens, and the others the process makes after the agent starts.
    let count = |out: &str, name: &str| out.lines().find_map(|l| l.strip_prefix(&format!("@{name}: "))?.trim().parse::<u64>().ok());
    let (enter, exits) = (count(&out, "enter").unwrap_or(0), count(&out, "exits").unwrap_or(0));
    assert!(enter >= 101 && enter == exits, "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", script]);
        let out = bpftrace_result(&tool_session(kernel, None, Command::new(&opens).arg("10"), &dir.join("kernel"), true));
        // The opens the dynamic loader makes before any code of ours runs included (recorded
        // by libbpftime_audit.so and replayed by the agent).
        let k = count(&out, "enter").unwrap_or(0);
        assert!(k == enter && k == count(&out, "exits").unwrap_or(0), "the kernel's:\n{out}\nours: {enter}");
        // Every call of `ls` (a copy, named for its lines) by number, as the kernel counts them,
        // but for those the loader makes before it loads an audit library (brk, mmap,
        // arch_prctl, set_tid_address, set_robust_list, rseq) and glibc's malloc set-up (brk,
        // getrandom), which the agent's first thread makes before the application's first
        // malloc: fewer, never more.
        let ls = dir.join("ls-count-test");
        std::fs::copy("/usr/bin/ls", &ls).unwrap();
        let script = r#"tracepoint:raw_syscalls:sys_enter /comm == "ls-count-test"/ { @[args->id] = count(); }"#;
        let by_number = |out: &str| counts_by_number(out, "");
        bpftime_tests::remove_region(&shm);
        assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&bpftrace).args(["-e", script]);
        let ours = by_number(&tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&ls).arg("/"), &dir.join("ours-all"), true));
        bpftime_tests::remove_region(&shm);
        let mut kernel = Command::new(&bpftrace);
        kernel.args(["-e", script]);
        let kernel = by_number(&tool_session(kernel, None, Command::new(&ls).arg("/"), &dir.join("kernel-all"), true));
        assert!(kernel.get(&257).is_some_and(|&n| n > 3), "{kernel:?}");
        assert_counts_like_the_kernels(&ours, &kernel, &[9, 12, 158, 218, 273, 318, 334], &[], &format!("ours {ours:?}\nkernel {kernel:?}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace (unmodified) on `raw_syscalls` counts the calls of a process's threads as the
/// kernel does (`examples/targets/threads.c`: five threads, one made by another): the calls
/// glibc makes as it starts each (`rseq`, `set_robust_list`, the `rt_sigprocmask` that puts
/// back its creator's mask), their exits, and `clone3`'s return of 0 in each new thread. Fewer
/// only for the dynamic loader's calls before an audit library and glibc's malloc set-up (see
/// `bpftrace_syscall_tracepoints_count_like_the_kernel`), the signal set-up glibc makes at the
/// process's first `pthread_create` (the agent's own first thread made it); the [`VARYING`]
/// calls are left out.
#[test]
fn bpftrace_sees_the_calls_of_every_thread_as_the_kernel_does() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let threads = build_target("threads", false);
    let script = r#"tracepoint:raw_syscalls:sys_enter /comm == "threads"/ { @enter[args->id] = count(); } tracepoint:raw_syscalls:sys_exit /comm == "threads" && args->ret == 0/ { @zero[args->id] = count(); }"#;
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, script, &dir, "threads", &threads, &["4", "10"]);
    let (o, k) = (counts_by_number(&ours, "enter"), counts_by_number(&kernel, "enter"));
    let (oz, kz) = (counts_by_number(&ours, "zero"), counts_by_number(&kernel, "zero"));
    // Five threads: five clone3s, each returning 0 in its thread; 50 getppid.
    assert_eq!(k.get(&110), Some(&50), "the kernel's:\n{kernel}");
    assert_eq!(kz.get(&435), Some(&5), "the kernel's:\n{kernel}");
    assert_counts_like_the_kernels(&o, &k, &[9, 12, 13, 14, 158, 218, 273, 318, 334], VARYING, &format!("ours:\n{ours}\nthe kernel's:\n{kernel}"));
    // Each thread's start: the main thread's rseq and set_robust_list come before any code of
    // ours, the others' all seen; its creator's mask put back in each.
    for nr in [273, 334] {
        assert_eq!(o.get(&nr).copied().unwrap_or(0) + 1, k[&nr], "call {nr}\nours:\n{ours}\nthe kernel's:\n{kernel}");
    }
    assert!(o.get(&14).copied().unwrap_or(0) + 1 >= k[&14], "rt_sigprocmask\nours:\n{ours}\nthe kernel's:\n{kernel}");
    let zero = |map: &std::collections::BTreeMap<u64, u64>, nr: u64| map.get(&nr).copied().unwrap_or(0);
    assert_eq!(zero(&oz, 435), 5, "clone3 returning 0 in each new thread\nours:\n{ours}");
    for nr in [273, 334] {
        assert_eq!(zero(&oz, nr) + 1, zero(&kz, nr), "call {nr} returning 0\nours:\n{ours}\nthe kernel's:\n{kernel}");
    }
    assert!(zero(&oz, 14) + 1 >= zero(&kz, 14), "rt_sigprocmask returning 0\nours:\n{ours}\nthe kernel's:\n{kernel}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace (unmodified) with a uprobe and `raw_syscalls` tracepoints on processes that fork
/// and spawn (`examples/targets/forks.c`: a thread hits the uprobe while the main thread forks;
/// `spawns.c`: vfork + execve and posix_spawn; `fork_kinds.c`: fork() with a fork handler of
/// the application's and a `prctl` in the child, `_Fork()` and a raw `fork`, which run no fork
/// handlers) counts as the kernel does: every uprobe hit, the fork's return of 0 in each child
/// and the `set_robust_list` glibc makes there before any fork handler (recorded by the child
/// and run by the agent's fork handler), each `vfork` child's return of 0, no call of ours. Fewer only for the calls before any code of ours (see
/// `bpftrace_syscall_tracepoints_count_like_the_kernel`), glibc's signal set-up at the first
/// `pthread_create`, and the actions of SIGSYS and SIGTRAP that a posix_spawn child resets
/// (ours are never blocked, and it resets those of the signals its mask blocks); the
/// [`VARYING`] calls are left out.
#[test]
fn bpftrace_follows_forks_and_spawns_like_the_kernel() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-forks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, args) in [("forks", &["100000", "5"][..]), ("spawns", &["3"][..]), ("fork_kinds", &["3"][..])] {
        let target = build_target(name, false);
        let uprobe = if name == "forks" { format!("uprobe:{}:add {{ @hits = count(); }} ", target.display()) } else { String::new() };
        let script = format!(
            r#"{uprobe}tracepoint:raw_syscalls:sys_enter /comm == "{name}"/ {{ @enter[args->id] = count(); }} tracepoint:raw_syscalls:sys_exit /comm == "{name}" && args->ret == 0/ {{ @zero[args->id] = count(); }}"#
        );
        let (ours, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, &script, &dir, name, &target, args);
        let context = format!("{name}, ours:\n{ours}\nthe kernel's:\n{kernel}");
        let hits = |out: &str| out.lines().find_map(|l| l.strip_prefix("@hits: ")?.trim().parse::<u64>().ok());
        assert_eq!(hits(&ours), hits(&kernel), "{context}");
        let fewer = [9, 12, 13, 14, 158, 218, 273, 318, 334];
        for map in ["enter", "zero"] {
            let (o, k) = (counts_by_number(&ours, map), counts_by_number(&kernel, map));
            assert_counts_like_the_kernels(&o, &k, &fewer, VARYING, &context);
            // Each child's start seen: only the main thread's set_robust_list comes before us.
            assert_eq!(o.get(&273).copied().unwrap_or(0) + 1, k[&273], "set_robust_list ({map})\n{context}");
        }
        let zero = counts_by_number(&ours, "zero");
        match name {
            // Five forks (glibc's `clone`) and their children's returns.
            "forks" => assert_eq!(zero.get(&56), Some(&5), "{context}"),
            // Three fork()s and three _Fork()s (`clone`), three raw `fork`s.
            "fork_kinds" => assert!(zero.get(&56) == Some(&6) && zero.get(&57) == Some(&3), "{context}"),
            // Three `vfork`s and three posix_spawn `clone3`s, each returning 0 in its child.
            _ => assert!(zero.get(&58) == Some(&3) && zero.get(&435) == Some(&3), "{context}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under a storm of timer signals whose handler makes a call (`signal_storm.c`: every 200 us,
/// landing in the target's calls, between them and in the agent's own code), bpftrace sees each
/// handler's `getppid` and its `rt_sigreturn` (entry and exit) once each. (Before: a handler
/// that ran where the agent had deferred its signal had its `rt_sigreturn` seen twice once
/// glibc's restorer was rewritten: by its stub and by the signal wrapper.)
#[test]
fn each_signal_handlers_return_is_seen_once() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_with_tracefs() else { return };
    let target = build_target("signal_storm", false);
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"tracepoint:raw_syscalls:sys_enter /comm == "signal_storm" && (args->id == 15 || args->id == 110)/ { @enter[args->id] = count(); } tracepoint:raw_syscalls:sys_exit /comm == "signal_storm" && args->id == -1/ { @sigreturn_exits = count(); }"#;
    let shm = format!("bpftime-bpftrace-storm-{}", std::process::id());
    let ours = bpftrace_under_bpftime(&bpftrace, script, &shm, target.as_os_str(), &["1"], &dir.join("ours"));
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
    let enters = counts_by_number(&ours, "enter");
    let exits = ours.lines().find_map(|l| l.strip_prefix("@sigreturn_exits: ")?.trim().parse::<u64>().ok());
    let handlers = enters.get(&110).copied().unwrap_or(0);
    assert!(handlers > 100, "{ours}");
    assert_eq!((enters.get(&15).copied(), exits), (Some(handlers), Some(handlers)), "{ours}");
}

/// bpftrace (unmodified) attached to a process that is already running, whose threads are
/// running or waiting then (`busy_threads.c`: three spin, one waits in `epoll_wait` with no
/// timeout, the main thread calls getppid and waits in `poll` for 5 ms, in turn): each thread
/// turns interception on for itself in a handler of the agent's signal. That handler's return
/// is no call of the program's, and the calls it interrupted are made again, as the kernel's
/// tracepoints, attached, interrupt none: the program's calls are counted, no `rt_sigreturn`
/// (the program receives no signal; the kernel sees none) and none of its calls ends with
/// EINTR. Before, each thread the signal reached returned through glibc's restorer, whose
/// `rt_sigreturn` interception took for the program's (four, one a thread), and the waits ended
/// with EINTR (the program's loop on `poll` ended there).
#[test]
fn attaching_to_running_threads_adds_no_call_of_ours() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_with_tracefs() else { return };
    let target = build_target("busy_threads", false);
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-bpftrace-late-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut busy = bpftime(&shm).args(["start", "--"]).arg(&target).arg("3").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(busy.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let log = dir.join("bpftrace");
    let f = std::fs::File::create(&log).unwrap();
    let script = r#"tracepoint:raw_syscalls:sys_enter /comm == "busy_threads"/ { @[args->id] = count(); }"#;
    let mut tool = bpftime(&shm).args(["load", "--"]).arg(&bpftrace).args(["-e", script]).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
    let attached = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let r = bpftime_shm::ShmRegion::open(&shm);
        r.is_ok_and(|r| {
            let links = bpftime_runtime::links::list(&r);
            !links.is_empty() && links.iter().all(|l| l.state == bpftime_runtime::links::LinkState::Attached)
        })
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(busy.stdin.take());
    let mut last = String::new();
    std::io::Read::read_to_string(&mut out, &mut last).unwrap();
    assert!(busy.wait().unwrap().success());
    let pid = child_of(tool.id());
    interrupt_until_it_ends(&mut tool, pid);
    let ours = std::fs::read_to_string(&log).unwrap();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(attached, "the links did not attach:\n{ours}");
    let counts = counts_by_number(&ours, "");
    assert!(counts.get(&110).is_some_and(|&n| n > 10), "getppid counted:\n{ours}");
    assert_eq!(counts.get(&15), None, "no rt_sigreturn:\n{ours}");
    assert!(last.ends_with(" interrupted 0\n"), "no call ended with EINTR: {last}");
}

/// bpftrace (unmodified) with uprobes on functions too short for a jump (`tiny.c`: probes kept
/// as int3 traps) beside a system call tracepoint: the hits are counted as on the kernel, and
/// no `rt_sigreturn` is seen (the kernel's uprobes deliver no signal). Before, each hit's
/// SIGTRAP handler returned through glibc's restorer, whose `rt_sigreturn` interception took
/// for the program's: 1,000 hits showed 1,000.
#[test]
fn int3_probes_beside_system_call_tracepoints_show_no_signal_of_ours() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let tiny = build_target("tiny", false);
    let t = tiny.display();
    let script = format!(
        r#"uprobe:{t}:t_ret1 {{ @ret1 = count(); }} uprobe:{t}:t_add4 {{ @add4 = count(); }} tracepoint:raw_syscalls:sys_enter /comm == "tiny"/ {{ @calls[args->id] = count(); }}"#
    );
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-int3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, &script, &dir, "tiny", &tiny, &["1000"]);
    let _ = std::fs::remove_dir_all(&dir);
    let line = |out: &str, name: &str| out.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    assert_eq!(line(&kernel, "@ret1: ").as_deref(), Some("@ret1: 1000"), "the kernel's:\n{kernel}");
    for name in ["@ret1: ", "@add4: "] {
        assert_eq!(line(&ours, name), line(&kernel, name), "ours:\n{ours}\nthe kernel's:\n{kernel}");
    }
    assert_eq!(counts_by_number(&kernel, "calls").get(&15), None, "the kernel's:\n{kernel}");
    assert_eq!(counts_by_number(&ours, "calls").get(&15), None, "ours:\n{ours}");
}

/// bpftrace (unmodified) on `raw_syscalls:sys_exit` sees the result the kernel's tracepoint
/// shows for calls that a signal interrupts, whose handler was installed without SA_RESTART
/// (`examples/targets/interrupts.c`: read, nanosleep, clock_nanosleep to an absolute time,
/// pause, poll with and without a timeout, select, ppoll, epoll_wait, futex waits with and
/// without a timeout, wait4, rt_sigtimedwait): the code the call gave before the signal's
/// delivery turned it into EINTR (-ERESTARTSYS, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK), or EINTR
/// where the call gives that itself, while the program gets EINTR from each; and each handler's
/// `rt_sigreturn`, entry and exit (number -1, the restored EINTR). (Before: -EINTR for all, and
/// no `rt_sigreturn`: a handler that interrupts a call we make for the application returns with
/// interception letting its `rt_sigreturn` through.) The same with a SA_RESTART handler
/// (`restarts.c`): each restart's exit and each `rt_sigreturn`, which restores the call's number.
/// Each handler makes a call of its own (`getppid`): the interrupted call's exit comes before
/// it, as on the kernel, so a tool that pairs a thread's entries with its exits (as latency
/// tools do) pairs them all (before, the handler's entry took the interrupted call's place and
/// its exit found none).
#[test]
fn interrupted_calls_report_the_kernels_codes() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let dir = std::env::temp_dir().join(format!("bpftime-bpftrace-interrupts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Exits that do not follow their own entry on their thread, by call number (a fork child's
    // return has none, on the kernel too; `rt_sigreturn`'s exit, number -1, is left out).
    const PAIRS: &str = r#"tracepoint:raw_syscalls:sys_enter /comm == "interrupts" || comm == "restarts"/ { @in[tid] = args->id + 1; } tracepoint:raw_syscalls:sys_exit /(comm == "interrupts" || comm == "restarts") && args->id >= 0/ { if (@in[tid] != args->id + 1) { @unpaired[args->id] = count(); } delete(@in[tid]); } END { clear(@in); }"#;
    // And `restarts.c`: a read that a SA_RESTART handler interrupts 5 times, restarted each time
    // (each `rt_sigreturn` restores the read's number, at its instruction).
    for (name, args) in [("interrupts", &[][..]), ("restarts", &["5"][..])] {
        let target = build_target(name, false);
        let script = format!(
            r#"tracepoint:raw_syscalls:sys_exit /comm == "{name}" && (args->id == -1 || args->ret == -4 || (args->ret <= -512 && args->ret >= -516))/ {{ @[args->id, args->ret] = count(); }} tracepoint:raw_syscalls:sys_enter /comm == "{name}" && args->id == 15/ {{ @sigreturns = count(); }} {PAIRS}"#
        );
        let (ours, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, &script, &dir, name, &target, args);
        let results = |out: &str| -> Vec<String> {
            let mut r: Vec<String> =
                out.lines().filter(|l| l.starts_with("@[") || l.starts_with("@sigreturns") || l.starts_with("@unpaired")).map(str::to_string).collect();
            r.sort();
            r
        };
        if name == "interrupts" {
            // Thirteen calls, each interrupted once: twelve results, and thirteen `rt_sigreturn`s.
            assert_eq!(results(&kernel).iter().filter(|l| !l.starts_with("@unpaired")).count(), 14, "the kernel's:\n{kernel}");
            assert!(kernel.contains("@[-1, -4]: 13") && kernel.contains("@sigreturns: 13"), "the kernel's:\n{kernel}");
        } else {
            assert!(kernel.contains("@[-1, 0]: 5") && kernel.contains("@[0, -512]: 5"), "the kernel's:\n{kernel}");
        }
        assert_eq!(results(&ours), results(&kernel), "{name}, ours:\n{ours}\nthe kernel's:\n{kernel}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's libbpf-tools `execsnoop` and `syscount` (unmodified; `bpf_get_current_task` read
/// through CO-RE for the parent's pid, `raw_syscalls` tracepoints) through the syscall server:
/// execsnoop prints the exec that starts the target (made by `bpftime start`, without the
/// agent: its entry programs run in the new image, on the arguments the call left) and each of
/// its three self-execs with its arguments and result, as on the kernel (`sys_exit_execve`
/// runs in the new image); syscount counts its 104 openat calls (101 of the marker, dlopen's of
/// libopener.so, and the dynamic loader's of its cache and libc, made before any code of ours
/// and replayed by the agent).
#[test]
fn libbpf_tools_execsnoop_and_syscount_see_what_the_kernel_sees() {
    let _serial = serial();
    let Some(execsnoop) = installed_or_skip("/usr/sbin/execsnoop", "libbpf-tools") else { return };
    let Some(syscount) = installed_or_skip("/usr/sbin/syscount", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() {
        return;
    }
    let execs = build_target("execs", false);
    let opens = build_target("opens", false);
    build_target("opener", true);
    // The target's lines: COMM, RET and ARGS (pids differ between runs): the exec that starts
    // it (made by `bpftime start`, which has no agent, or by the test) and its self-execs.
    let target = execs.display().to_string();
    let self_execs = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("/proc/self/exe") || l.contains(&format!("{target} 100 3")))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {}", w[0], w[3], w[4..].join(" ").replace(&target, "TARGET"))
            })
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("bpftime-execsnoop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-execsnoop-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    // execsnoop's event map is large: a bigger region.
    assert!(bpftime(&shm).args(["shm", "create", "--size", "512M"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&execsnoop);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&execs).args(["100", "3"]), &dir.join("ours"), true);
    let ours = self_execs(&out);
    assert_eq!(ours, ["execs 0 TARGET 100 3", "exe 0 /proc/self/exe 100 2", "exe 0 /proc/self/exe 100 1", "exe 0 /proc/self/exe 100 0"], "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let out = tool_session(Command::new(&execsnoop), None, Command::new(&execs).args(["100", "3"]), &dir.join("kernel"), true);
        assert_eq!(ours, self_execs(&out), "the kernel's:\n{out}");
    }
    assert!(bpftime(&shm).args(["shm", "create", "--size", "256M"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&syscount).args(["-d", "5"]);
    // (Without the test harness's LD_LIBRARY_PATH, whose folders the loader would search.)
    let out =
        tool_session(ours, Some(&shm), bpftime(&shm).env_remove("LD_LIBRARY_PATH").args(["start", "--"]).arg(&opens).arg("10"), &dir.join("syscount"), false);
    let openat = out.lines().find_map(|l| l.strip_prefix("openat")?.trim().parse::<u64>().ok());
    assert_eq!(openat, Some(104), "{out}");
    bpftime_tests::remove_region(&shm);
    // By process (`-P`): the name is `current->group_leader->comm`, which its second thread
    // reads too. (The counts differ from the kernel's by the few calls the dynamic loader makes
    // before it loads the audit library.)
    let named = |out: &str| out.lines().any(|l| l.split_whitespace().nth(1) == Some("opens"));
    assert!(bpftime(&shm).args(["shm", "create", "--size", "256M"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&syscount).args(["-P", "-d", "5"]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&opens).arg("10"), &dir.join("syscount-p"), false);
    assert!(named(&out), "{out}");
    bpftime_tests::remove_region(&shm);
    if is_root() {
        let mut kernel = Command::new(&syscount);
        kernel.args(["-P", "-d", "5"]);
        let out = tool_session(kernel, None, Command::new(&opens).arg("10"), &dir.join("syscount-p-kernel"), false);
        assert!(named(&out), "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the code of `function` in process `pid` is the file's (no probe of ours there).
fn code_is_the_files(pid: u32, binary: &Path, function: &str) -> bool {
    use std::os::unix::fs::FileExt;
    let off = bpftime_tests::kernel::symbol_file_offset(binary, function).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let addr = maps.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (start, end) = f.first()?.split_once('-')?;
        let (start, end, file_off) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?, u64::from_str_radix(f.get(2)?, 16).ok()?);
        (Path::new(f.get(5)?) == binary && file_off <= off && off < file_off + (end - start)).then(|| start + off - file_off)
    });
    let (mut now, mut file) = ([0u8; 16], [0u8; 16]);
    let Some(addr) = addr else { return false };
    std::fs::File::open(format!("/proc/{pid}/mem")).and_then(|m| m.read_exact_at(&mut now, addr)).unwrap();
    std::fs::File::open(binary).and_then(|b| b.read_exact_at(&mut file, off)).unwrap();
    now == file
}

/// A command that has process `pid` (the `attachable` target) run `add(i, 1)` for `i < n`.
fn have_it_run(pid: u32, n: u32) -> Command {
    tell(pid, &format!("run {n}"))
}

/// A command that gives process `pid` (the `attachable` target) the commands `lines`.
fn tell(pid: u32, lines: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", &format!("printf '{lines}\\n' > /proc/{pid}/fd/0; sleep 0.5")]);
    c
}

/// [`tell`], once `links` links of region `shm` are attached (up to 10 s): the agent loaded
/// into a process started without it attaches the links stored before it came on its own time
/// (its link follower), which a loaded machine can stretch past the time a tool takes to say it
/// is ready; and a tool with several links may not have stored them all yet.
fn tell_once_attached(shm: &str, pid: u32, lines: &str, links: usize) -> Command {
    let bin = env!("CARGO_BIN_EXE_bpftime");
    let mut c = Command::new("sh");
    c.args([
        "-c",
        &format!(
            "for i in $(seq 200); do [ \"$('{bin}' --shm '{shm}' link list 2>/dev/null | grep -c '(Attached')\" -ge {links} ] && break; sleep 0.05; done; printf '{lines}\\n' > /proc/{pid}/fd/0; sleep 0.5"
        ),
    ]);
    c
}

/// Waits (up to 5 s) until no probe of ours is left on `function` in process `pid`.
fn wait_until_code_is_the_files(pid: u32, binary: &Path, function: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !code_is_the_files(pid, binary, function) {
        assert!(std::time::Instant::now() < deadline, "the probe is still in process {pid} after its loader exited");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The kernel's bpftrace running `script` (with `args`) counts 3000 calls `add(i, 1)` of the
/// `attachable` process `pid`, which answers on `lines` and runs on.
fn the_kernel_counts_them_too(bpftrace: &Path, args: &[String], script: &str, pid: u32, lines: &mut impl BufRead, dir: &Path) {
    let mut kernel = Command::new(bpftrace);
    kernel.args(args).args(["-e", script]);
    let out = tool_session(kernel, None, &mut have_it_run(pid, 3000), &dir.join("kernel"), true);
    assert!(out.contains("@n: 3000\n") && out.contains("@s: 4498500\n"), "the kernel's uprobe:\n{out}");
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "done 4501500\n", "the process ran on");
}

/// A process started without the agent is traced as the kernel traces it: bpftrace's uprobe
/// on its executable with `-p PID` (bpftrace filters the pid in the program; the probe is for
/// every process) loads the agent into the process the command line names (`bpftime attach`),
/// counts exactly its calls, and when bpftrace exits the
/// probe goes at once: the code is the file's again and the kernel's own uprobe on the same
/// function (which would crash the process if our jump were still there) counts its calls.
#[test]
fn a_process_started_without_the_agent_is_reached_and_left_clean() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    if !is_root() {
        return println!("skipping: needs root (ptrace of a process that is not a child, kernel uprobes)");
    }
    let target = build_target("attachable", false);
    let mut app = Attachable::plain(&target);
    let pid = app.pid;
    let script = format!("uprobe:{}:add /arg1 == 1/ {{ @n = count(); @s = sum(arg0); }}", target.display());
    let dir = std::env::temp_dir().join(format!("bpftime-reach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-reach-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-p", &pid.to_string(), "-e", &script]);
    let out = tool_session(ours, Some(&shm), &mut tell_once_attached(&shm, pid, "run 5000", 1), &dir.join("ours"), true);
    assert!(out.contains(&format!("process {pid} was started without the agent; loaded it there")), "{out}");
    // The calls add(i, 1), i < 5000 (the process's other thread calls add(0, 0) meanwhile).
    assert!(out.contains("@n: 5000\n") && out.contains("@s: 12497500\n"), "{out}");
    assert_eq!(app.answer(), "done 12502500\n");
    wait_until_code_is_the_files(pid, &target, "add");
    the_kernel_counts_them_too(&bpftrace, &["-p".into(), pid.to_string()], &script, pid, &mut app.lines, &dir);
    app.quit();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A probe on `malloc` in a process reached while it runs (`-p PID`): the agent came by
/// `dlopen`, so each thread gets its block of the agent's thread-locals at its first hit, from
/// `malloc`, whose probe hit again there, for ever, until the thread's stack overflowed (an
/// 8-thread python died under `bpftrace -p PID -e 'uprobe:libc:malloc ...'`). The process lives
/// on and every call is counted.
#[test]
fn a_running_process_reached_with_a_probe_on_malloc_lives_on() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    if !is_root() {
        return println!("skipping: needs root (ptrace of a process that is not a child)");
    }
    let target = build_target("attachable", false);
    let mut app = Attachable::plain(&target);
    let pid = app.pid;
    let dir = std::env::temp_dir().join(format!("bpftime-reach-malloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-reach-malloc-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&bpftrace).args(["-p", &pid.to_string(), "-e", "uprobe:libc:malloc { @m = count(); }"]);
    // The process's other thread (not the one the agent was loaded in) makes the calls.
    let out = tool_session(ours, Some(&shm), &mut tell_once_attached(&shm, pid, "alloc 1000", 1), &dir.join("ours"), true);
    assert!(out.contains(&format!("process {pid} was started without the agent; loaded it there")), "{out}");
    assert_eq!(app.answer(), "allocated 1000\n", "the process after its first calls under the probe\n{out}");
    let m: u64 = out.lines().find_map(|l| l.strip_prefix("@m: ")?.trim().parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(m >= 1000, "{out}");
    app.quit();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// bpftrace running `script` under `bpftime load` with region `shm` (and `env`), its output in
/// `out`; returned once it says how many probes it attaches (that number; 0 if it never does).
fn bpftrace_loaded(bpftrace: &Path, shm: &str, script: &str, env: &[(&str, &str)], out: &Path) -> (std::process::Child, usize) {
    let f = std::fs::File::create(out).unwrap();
    let mut c = bpftime(shm);
    c.args(["load", "--"]).arg(bpftrace).args(["-e", script]).stdout(f.try_clone().unwrap()).stderr(f);
    c.envs(env.iter().copied());
    let tool = c.spawn().unwrap();
    for _ in 0..400 {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(n) = text.lines().find_map(|l| l.strip_prefix("Attaching ")?.split_whitespace().next()?.parse::<usize>().ok()) {
            return (tool, n);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (tool, 0)
}

/// Interrupts the bpftrace that `bpftime load` process `tool` runs until it exits (bpftrace
/// prints its maps on SIGINT).
fn interrupt_loader(tool: &mut std::process::Child) {
    let loader = child_of(tool.id());
    while tool.try_wait().unwrap().is_none() {
        // SAFETY: kill(2) on a process we started.
        unsafe { libc::kill(loader, libc::SIGINT) };
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The `attachable` target under `bpftime start` with region `shm`, once it said it is ready.
struct Attachable {
    app: std::process::Child,
    lines: BufReader<std::process::ChildStdout>,
    input: std::process::ChildStdin,
    /// The target's own pid (`bpftime start` runs it as its child).
    pid: u32,
}

impl Attachable {
    /// Under `bpftime start` with region `shm`.
    fn start(shm: &str, target: &Path) -> Attachable {
        let mut c = bpftime(shm);
        c.args(["start", "--"]).arg(target);
        let mut a = Attachable::spawn(c);
        a.pid = child_of(a.app.id()) as u32;
        a
    }

    /// On its own, without the agent.
    fn plain(target: &Path) -> Attachable {
        Attachable::spawn(Command::new(target))
    }

    fn spawn(mut c: Command) -> Attachable {
        let mut app = c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(app.stdout.take().unwrap());
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let input = app.stdin.take().unwrap();
        let pid = app.id();
        Attachable { app, lines, input, pid }
    }

    /// The next line it prints.
    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line
    }

    /// Gives it `command` and returns the line it answers.
    fn ask(&mut self, command: &str) -> String {
        self.input.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line
    }

    /// Tells it to quit; it exits 0.
    fn quit(mut self) {
        self.input.write_all(b"quit\n").unwrap();
        assert!(self.app.wait().unwrap().success());
    }
}

/// A process started with the agent while a loader's probe was already there (so the agent
/// attached it at start), and a child it forked, lose the probe when the loader exits, as with
/// the kernel: the code is the file's again at once and the kernel's own uprobe on the same
/// function counts the process's calls.
#[test]
fn a_loaders_exit_removes_its_probes_from_processes_started_after_it() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    if !is_root() {
        return println!("skipping: needs root (kernel uprobes)");
    }
    let target = build_target("attachable", false);
    let script = format!("uprobe:{}:add /arg1 == 1/ {{ @n = count(); @s = sum(arg0); }}", target.display());
    let dir = std::env::temp_dir().join(format!("bpftime-leave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-leave-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = dir.join("ours");
    let (mut tool, _) = bpftrace_loaded(&bpftrace, &shm, &script, &[], &out);
    wait_attached(Some(&shm), 0);
    let mut app = Attachable::start(&shm, &target);
    assert_eq!(app.ask("run 5000"), "done 12502500\n");
    // A child forked now keeps the probe (as under the kernel) until the loader exits.
    let line = app.ask("fork");
    let forked: u32 = line.strip_prefix("child ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("{line}"));
    struct Killed(i32);
    impl Drop for Killed {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the target's child (it loops until killed).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _forked = Killed(forked as i32);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!code_is_the_files(forked, &target, "add"), "the forked child has the probe");
    interrupt_loader(&mut tool);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("@n: 5000\n") && text.contains("@s: 12497500\n"), "{text}");
    wait_until_code_is_the_files(app.pid, &target, "add");
    wait_until_code_is_the_files(forked, &target, "add");
    the_kernel_counts_them_too(&bpftrace, &[], &script, app.pid, &mut app.lines, &dir);
    app.quit();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bpftrace wildcard probe on libc (`s*`, `m*`, `f*`, `g*`, `r*`: about 1,200 probes, each
/// with its own program) fills more than the region's first object table chunk (2,400
/// objects) and the 1,024 patch sites a process used to have: every probe attaches in the
/// process, which runs as it does without them, and they count its calls.
#[test]
fn a_thousand_probes_attach_in_one_process() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let target = build_target("attachable", false);
    let script = "uprobe:libc:s*,uprobe:libc:m*,uprobe:libc:f*,uprobe:libc:g*,uprobe:libc:r* /comm == \"attachable\"/ { @n = count(); }";
    let dir = std::env::temp_dir().join(format!("bpftime-thousand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-thousand-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = dir.join("ours");
    let (mut tool, probes) = bpftrace_loaded(&bpftrace, &shm, script, &[("BPFTRACE_MAX_PROBES", "10000")], &out);
    assert!(probes > 1024, "{}", std::fs::read_to_string(&out).unwrap_or_default());
    let links = |state: &str| {
        let o = bpftime(&shm).args(["link", "list"]).output().unwrap();
        text(&o.stdout).lines().filter(|l| l.contains(" uprobe ") && l.contains(state)).count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while links("") < probes {
        assert!(std::time::Instant::now() < deadline, "{} links of {probes} made", links(""));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let app = {
        let mut app = Attachable::start(&shm, &target);
        while links("(Attached") < probes {
            assert!(std::time::Instant::now() < deadline, "{} of {probes} probes attached", links("(Attached"));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(app.ask("run 1000"), "done 500500\n");
        app
    };
    app.quit();
    interrupt_loader(&mut tool);
    let text = std::fs::read_to_string(&out).unwrap();
    let n: u64 = text.lines().find_map(|l| l.strip_prefix("@n: ")?.trim().parse().ok()).unwrap_or_else(|| panic!("{text}"));
    assert!(n > 0, "{text}");
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A probe on `malloc` goes away while its process runs on: the agent's link follower takes it
/// out, and calls `malloc` itself while the function's first byte is the `int3` of the change
/// (to list the threads it moves out of the bytes). That thread used to block every signal, so
/// the kernel killed the process with the SIGTRAP (bpftrace's `uprobe:libc:m*` under `bpftime
/// load`, the traced python killed at bpftrace's exit); it runs on now, and its calls after the
/// probe went are its own.
#[test]
fn taking_a_probe_off_malloc_leaves_the_process_running() {
    let _serial = serial();
    let Some(bpftrace) = which("bpftrace").ok().and_then(|p| installed_or_skip(p.to_str().unwrap_or_default(), "bpftrace")) else { return };
    let target = build_target("attachable", false);
    let dir = std::env::temp_dir().join(format!("bpftime-off-malloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-off-malloc-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = dir.join("ours");
    let (mut tool, _) = bpftrace_loaded(&bpftrace, &shm, "uprobe:libc:malloc { @m = count(); }", &[], &out);
    wait_attached(Some(&shm), 0);
    let mut app = Attachable::start(&shm, &target);
    let libc_path = std::fs::read_to_string(format!("/proc/{}/maps", app.pid))
        .unwrap()
        .lines()
        .find_map(|l| l.split_whitespace().nth(5).filter(|p| p.contains("/libc.so")).map(PathBuf::from))
        .expect("the target maps libc");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while code_is_the_files(app.pid, &libc_path, "malloc") {
        assert!(std::time::Instant::now() < deadline, "malloc was never probed in process {}", app.pid);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(app.ask("open /etc/hostname").starts_with("opened "));
    interrupt_loader(&mut tool);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("@m: "), "{text}");
    wait_until_code_is_the_files(app.pid, &libc_path, "malloc");
    assert_eq!(app.ask("run 100"), "done 5050\n", "the process after the probe went");
    app.quit();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dynamic loader opens its cache and every library (and searches for them) before any
/// code of the agent can run, then the constructors of the program's libraries run before its
/// `main` (libselinux's in `ls` reads /proc/filesystems), and the kernel traces all of it. The
/// loader's calls are recorded by `libbpftime_audit.so` (LD_AUDIT, `bpftime start`) and replayed
/// when the agent starts, which is before those constructors (from `libbpftime_early.so`): Debian's
/// opensnoop prints the same opens for `ls`, with their descriptors and errors, as on the kernel.
/// Those of the agent's own libraries are not printed (the kernel never sees them).
#[test]
fn opens_of_the_dynamic_loader_and_library_constructors_are_traced_like_the_kernel() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/opensnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() || !is_root() {
        return println!("skipping: needs root and tracefs");
    }
    let dir = std::env::temp_dir().join(format!("bpftime-ctors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A copy, so that its name picks out its lines.
    let ls = dir.join("ls-ctor-test");
    std::fs::copy("/usr/bin/ls", &ls).unwrap();
    let opens = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("ls-ctor-test"))
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let shm = format!("bpftime-ctors-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).args(["-d", "4"]);
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&ls).arg("/"), &dir.join("ours"), false);
    let ours = opens(&out);
    bpftime_tests::remove_region(&shm);
    let mut kernel = Command::new(&tool);
    kernel.args(["-d", "4"]);
    let out = tool_session(kernel, None, Command::new(&ls).arg("/"), &dir.join("kernel"), false);
    let kernel = opens(&out);
    assert!(kernel.iter().any(|l| l.ends_with(" /etc/ld.so.cache")) && kernel.iter().any(|l| l.contains("/libselinux.so")), "the kernel's opens of ls:\n{out}");
    assert_eq!(ours, kernel, "the opens of `ls /`: descriptor, error, path");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's `opensnoop -p PID` (a system call tracepoint program filtering the pid) on a process
/// started without the agent: the process it names gets the agent, and its opens are printed as
/// on the kernel.
#[test]
fn opensnoop_of_a_named_process_started_without_the_agent_sees_its_opens() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/opensnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() || !is_root() {
        return println!("skipping: needs root and tracefs");
    }
    let target = build_target("attachable", false);
    let mut app = Command::new(&target).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let pid = app.id();
    let marker = format!("/tmp/bpftime-named-open-{}", std::process::id());
    std::fs::write(&marker, b"x").unwrap();
    let opens = format!("open {marker}\\nopen {marker}\\nopen {marker}");
    let marker_lines = |out: &str| out.lines().filter(|l| l.ends_with(&marker) && l.split_whitespace().next() == Some(&pid.to_string())).count();
    let dir = std::env::temp_dir().join(format!("bpftime-named-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-named-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).args(["-p", &pid.to_string()]);
    let out = tool_session(ours, Some(&shm), &mut tell_once_attached(&shm, pid, &opens, 2), &dir.join("ours"), true);
    assert_eq!(marker_lines(&out), 3, "{out}");
    let mut kernel = Command::new(&tool);
    kernel.args(["-p", &pid.to_string()]);
    let out = tool_session(kernel, None, &mut tell(pid, &opens), &dir.join("kernel"), true);
    assert_eq!(marker_lines(&out), 3, "the kernel's:\n{out}");
    app.stdin.take().unwrap().write_all(b"quit\n").unwrap();
    assert!(app.wait().unwrap().success());
    let _ = std::fs::remove_file(&marker);
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program on a kernel tracepoint (Debian's `tcpstates`: `sock/inet_sock_set_state`) cannot
/// run in a traced process: the loader is told why and what to do, once, and fails as a kernel
/// without the event would make it fail, rather than with a puzzling `EBADF`.
#[test]
fn a_kernel_tracepoint_program_is_refused_with_the_way_out() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/tcpstates", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() {
        return println!("skipping: needs tracefs");
    }
    let shm = format!("bpftime-kernel-tp-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let o = bpftime(&shm).args(["load", "--"]).arg(&tool).output().unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.matches("attaches to a kernel event").count(), 1, "{err}");
    assert!(err.contains("bpftime load --kernel-passthrough") && err.contains("Invalid argument"), "{err}");
    bpftime_tests::remove_region(&shm);
}

/// With `--kernel-passthrough`, the same `tcpstates` runs its program in the kernel and reads
/// its perf buffer through the region (the kernel's records relayed into the ring it mapped):
/// it prints the state changes of a process's TCP connection over loopback as on the kernel.
#[test]
fn tcpstates_under_passthrough_prints_state_changes_as_on_the_kernel() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/tcpstates", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() || !is_root() {
        return println!("skipping: needs root and tracefs");
    }
    // A listener, a connection to it, both ends closed.
    let connects = "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nc = socket.create_connection(s.getsockname())\na, _ = s.accept()\nc.close()\na.close()\ns.close()\n";
    // SKADDR, PID, COMM, LADDR, LPORT, RADDR, RPORT, OLDSTATE, ->, NEWSTATE, MS: the changes
    // of the listener's port (the one that starts LISTEN), without addresses and times.
    let changes = |out: &str| -> Vec<String> {
        let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() == 11 && f[8] == "->").collect();
        let Some(port) = rows.iter().find(|f| f[9] == "LISTEN").map(|f| f[4]) else { return vec![] };
        let mut lines: Vec<String> = rows.iter().filter(|f| f[4] == port || f[6] == port).map(|f| format!("{} -> {}", f[7], f[9])).collect();
        lines.sort();
        lines
    };
    let dir = std::env::temp_dir().join(format!("bpftime-tcpstates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-tcpstates-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let mut ours = bpftime(&shm);
    ours.args(["load", "--kernel-passthrough", "--"]).arg(&tool);
    // Its link is the kernel's, not in the region: the session waits a fixed time to attach.
    let out = tool_session(ours, None, Command::new("python3").args(["-c", connects]), &dir.join("ours"), true);
    let ours = changes(&out);
    assert!(ours.contains(&"SYN_SENT -> ESTABLISHED".to_string()) && ours.contains(&"LISTEN -> CLOSE".to_string()), "{out}");
    let out = tool_session(Command::new(&tool), None, Command::new("python3").args(["-c", connects]), &dir.join("kernel"), true);
    assert_eq!(ours, changes(&out), "the kernel's:\n{out}");
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The signal tracepoints in a traced process, through bpftrace (unmodified) and Debian's
/// libbpf-tools `sigsnoop` (its default mode: `signal_generate`), on a target that sends itself
/// signals every way (`sends.c`: `raise`, `kill`, `sigqueue`, `pthread_kill` to another
/// thread, one blocked and sent twice, one whose default is to ignore it, one set to
/// `SIG_IGN`): `signal_generate` with each signal's code, target, group and result (delivered,
/// ignored, already pending) and the `SIGCHLD` its end sends its parent; `signal_deliver` as
/// each handler runs, with its code and the action's flags. The same lines as the kernel's.
#[test]
fn signals_sent_and_delivered_are_seen_as_the_kernel_sees_them() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let target = build_target("sends", false);
    let script = r#"tracepoint:signal:signal_generate /comm == "sends" && args->sig != 17/ { printf("generate sig=%d errno=%d code=%d comm=%s group=%d result=%d self=%d\n", args->sig, args->errno, args->code, args->comm, args->group, args->result, (int64)args->pid == (int64)pid || (int64)args->pid == (int64)tid); }
        tracepoint:signal:signal_generate /comm == "sends" && args->sig == 17/ { @chld = count(); }
        tracepoint:signal:signal_deliver /comm == "sends"/ { printf("deliver sig=%d errno=%d code=%d flags=%x handler=%d\n", args->sig, args->errno, args->code, args->sa_flags, args->sa_handler != 0); }"#;
    let events = |out: &str| {
        let mut lines: Vec<String> =
            out.lines().filter(|l| l.starts_with("generate ") || l.starts_with("deliver ") || l.starts_with("@chld")).map(str::to_string).collect();
        lines.sort();
        lines
    };
    let dir = std::env::temp_dir().join(format!("bpftime-sends-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, script, &dir, "sends", &target, &[]);
    let ours = events(&out);
    let count = |kind: &str| ours.iter().filter(|l| l.starts_with(kind)).count();
    assert_eq!((count("generate "), count("deliver ")), (8, 5), "{out}");
    assert!(ours.contains(&"generate sig=12 errno=0 code=0 comm=sends group=1 result=2 self=1".to_string()), "{out}");
    assert!(ours.contains(&"@chld: 1".to_string()), "{out}");
    assert_eq!(ours, events(&kernel), "the kernel's:\n{kernel}");
    // sigsnoop: TIME, PID, COMM, SIG, TPID, RESULT: the target's lines without time and ids.
    if let Some(tool) = installed_or_skip("/usr/sbin/sigsnoop", "libbpf-tools") {
        let sent = |out: &str| -> Vec<String> {
            let mut lines: Vec<String> = out
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() == 6 && f[2] == "sends")
                .map(|f| format!("{} {} {}", f[2], f[3], f[5]))
                .collect();
            lines.sort();
            lines
        };
        let shm = format!("bpftime-sigsnoop-{}", std::process::id());
        bpftime_tests::remove_region(&shm);
        assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
        let mut ours = bpftime(&shm);
        ours.args(["load", "--"]).arg(&tool);
        let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&target), &dir.join("ours-sigsnoop"), true);
        bpftime_tests::remove_region(&shm);
        let ours = sent(&out);
        assert_eq!(ours.len(), 9, "{out}");
        let out = tool_session(Command::new(&tool), None, &mut Command::new(&target), &dir.join("kernel-sigsnoop"), true);
        assert_eq!(ours, sent(&out), "the kernel's:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process lifecycle tracepoints in a traced process, through bpftrace (unmodified:
/// `args` laid out from tracefs, `str(args->filename)` through the `__data_loc` word,
/// `curtask->exit_code` through the stand-in task): `sched_process_exec` as an image starts
/// (the exec'd child's too, under its new name), `sched_process_fork` for every thread and
/// process made, `sched_process_wait` as it waits for each child, `sched_process_exit` for
/// every thread that ends, with the exit code the
/// kernel gives it (a thread that returns, `_exit(7)`, and `exit(5)` from a thread, which
/// ends the main thread too; the main thread an `execve` from another thread ends, the exec's
/// `old_pid` that thread's id); the same lines as the kernel's for the same target.
#[test]
fn bpftrace_sees_processes_start_fork_and_exit_as_the_kernel_does() {
    let _serial = serial();
    let Some(bpftrace) = bpftrace_beside_the_kernel() else { return };
    let target = build_target("lifecycle", false);
    let script = r#"tracepoint:sched:sched_process_exec /comm == "lifecycle" || comm == "exe"/ { printf("exec %s %s %d %d\n", comm, str(args->filename), (int64)args->pid == (int64)pid, args->old_pid == args->pid); }
        tracepoint:sched:sched_process_fork /comm == "lifecycle"/ { printf("fork %s %s %d\n", str(args->parent_comm), str(args->child_comm), (int64)args->parent_pid == (int64)tid); }
        tracepoint:sched:sched_process_exit /comm == "lifecycle" || comm == "exe"/ { printf("exit %s leader=%d code=%d prio=%d\n", args->comm, pid == tid, curtask->exit_code, args->prio); }
        tracepoint:sched:sched_process_wait /comm == "lifecycle"/ { printf("wait %s child=%d prio=%d\n", str(args->comm), args->pid > 0, args->prio); }"#;
    let events = |out: &str| {
        let mut lines: Vec<String> =
            out.lines().filter(|l| ["exec ", "fork ", "exit ", "wait "].iter().any(|p| l.starts_with(p))).map(str::to_string).collect();
        lines.sort();
        lines
    };
    let dir = std::env::temp_dir().join(format!("bpftime-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, kernel) = bpftrace_ours_and_the_kernels(&bpftrace, script, &dir, "lifecycle", &target, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    let ours = events(&out);
    // Two threads and three children made, and a thread in two of them; eight threads ended
    // (the main thread of the child that a thread ends with `exit(5)` included, and that of the
    // child whose thread execs, which the exec ends); two images started, the second by a
    // thread that is not the main one (its `old_pid` is its own id, not the process's).
    let count = |kind: &str| ours.iter().filter(|l| l.starts_with(kind)).count();
    assert_eq!((count("exec "), count("fork "), count("exit "), count("wait ")), (2, 7, 8, 3), "{out}");
    assert!(ours.contains(&"exit lifecycle leader=1 code=1280 prio=120".to_string()), "{out}");
    assert_eq!(ours, events(&kernel), "the kernel's:\n{kernel}");
}

/// Debian's libbpf-tools `exitsnoop -T` (unmodified: `tracepoint/sched/sched_process_exit`,
/// CO-RE reads of `exit_code`, `start_time` and `real_parent->tgid`, a perf buffer) through the
/// syscall server prints the exits of a traced process's threads and children with the codes
/// and parents the kernel's prints.
#[test]
fn libbpf_tools_exitsnoop_prints_exits_as_on_the_kernel() {
    let _serial = serial();
    let Some(tool) = installed_or_skip("/usr/sbin/exitsnoop", "libbpf-tools") else { return };
    if !bpftime_tests::kernel::tracefs_mounted() || !is_root() {
        return println!("skipping: needs root and tracefs");
    }
    let target = build_target("lifecycle", false);
    // PCOMM, PID, PPID, TID, AGE, EXIT_CODE: the target's lines with its pids told apart as the
    // main process or another, without the age.
    let exits = |out: &str| -> Vec<String> {
        let rows: Vec<Vec<&str>> =
            out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() >= 6 && (f[0] == "lifecycle" || f[0] == "exe")).collect();
        let main = rows.iter().filter_map(|f| f[1].parse::<u32>().ok()).min().unwrap_or(0).to_string();
        let mut lines: Vec<String> =
            rows.iter().map(|f| format!("{} pid={} ppid={} leader={} {}", f[0], f[1] == main, f[2] == main, f[1] == f[3], f[5..].join(" "))).collect();
        lines.sort();
        lines
    };
    let dir = std::env::temp_dir().join(format!("bpftime-exitsnoop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shm = format!("bpftime-exitsnoop-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    assert!(bpftime(&shm).args(["shm", "create"]).output().unwrap().status.success());
    let mut ours = bpftime(&shm);
    ours.args(["load", "--"]).arg(&tool).arg("-T");
    let out = tool_session(ours, Some(&shm), bpftime(&shm).args(["start", "--"]).arg(&target), &dir.join("ours"), true);
    let ours = exits(&out);
    assert_eq!(ours.len(), 8, "{out}");
    assert!(ours.contains(&"lifecycle pid=false ppid=true leader=true code 7".to_string()), "{out}");
    let mut kernel = Command::new(&tool);
    kernel.arg("-T");
    let out = tool_session(kernel, None, &mut Command::new(&target), &dir.join("kernel"), true);
    assert_eq!(ours, exits(&out), "the kernel's:\n{out}");
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Helpers that call back into the program, numeric iterators and global functions, run once
/// each by `BPF_PROG_TEST_RUN` from an unmodified libbpf loader (`test_run_lines`, which prints
/// what each program wrote down): `bpf_loop` (a stop, no iterations, flags, too many),
/// `bpf_for_each_map_elem` over array, hash, per-CPU and LRU maps (sums, stops, values changed by
/// the callback, flags), `bpf_iter_num_*` (a range, an empty one, one too long), a global
/// function, maps of maps (inner maps from BTF, a missing index, one inner map under two outer
/// maps). The same lines under the syscall server as in the kernel.
#[test]
fn callbacks_and_iterators_answer_what_the_kernel_answers() {
    let _serial = serial();
    let loader = build_loader("test_run_lines");
    let obj = build_example("callback_answers");
    let progs = ["loops", "map_walks", "more_walks", "iterators", "global_functions", "maps_of_maps"];
    let shm = format!("bpftime-callbacks-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let out = bpftime(&shm).args(["load", "--"]).arg(&loader).arg(&obj).args(progs).output().unwrap();
    bpftime_tests::remove_region(&shm);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours = text(&out.stdout);
    assert!(ours.contains("global_functions: 2: 43 -8"), "{ours}");
    if is_root() {
        let kernel = Command::new(&loader).arg(&obj).args(progs).output().unwrap();
        assert_eq!(ours, text(&kernel.stdout), "ours, then the kernel's");
    }
}
