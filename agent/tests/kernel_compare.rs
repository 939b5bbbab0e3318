//! The same clang-built programs on the same C targets under the kernel's uprobes and under
//! the agent: the maps must hold the same bytes. We match the kernel, not ourselves.
//! Skipped, with the reason printed, where the kernel cannot be used (not root, no uprobes).

use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{links, EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::{build_example, build_target};
use bpftime_tests::kernel::{mapped_library, KernelObject};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

fn agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(|d| d.parent()).unwrap().join("libbpftime.so");
    assert!(p.exists(), "{} is missing: build the workspace", p.display());
    p
}

/// Runs `target ARGS wait` and releases it with a byte on stdin once `setup(pid)` has run.
fn run_released(target: &Path, args: &[&str], env: &[(&str, &str)], setup: impl FnOnce(u32)) -> std::process::Output {
    let mut cmd = Command::new(target);
    cmd.args(args).arg("wait").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start target");
    // Wait until the process has mapped its libraries: it then blocks in read(0, ...) (system
    // call 0 on fd 0; a wait channel would also match the loader's waits for the disk).
    let pid = child.id();
    for _ in 0..500 {
        if std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|w| w.starts_with("0 0x0 ")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    setup(pid);
    child.stdin.take().unwrap().write_all(b"x").unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `target ARGS wait` under the agent with `example`'s probes in a fresh region, on both
/// engines and both ways of catching returns (patched `ret`s; the return address replaced at
/// entry), and hands each successful run (described in `what`) to `check`.
fn under_the_agent(tag: &str, example: &str, target: &Path, args: &[&str], check: impl Fn(&str, &std::process::Output, &Ours)) {
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        for returns in ["ret", "stack"] {
            let ours = Ours::new(&format!("{tag}-{engine}-{returns}"), example, kind);
            let agent = agent();
            let env =
                [("LD_PRELOAD", agent.to_str().unwrap()), ("BPFTIME_SHM", ours.name.as_str()), ("BPFTIME_ENGINE", engine), ("BPFTIME_URETPROBE", returns)];
            let out = run_released(target, args, &env, |_| {});
            let what = format!("{engine}, returns caught by `{returns}`");
            assert!(out.status.success(), "{what}: {out:?}");
            check(&what, &out, &ours);
        }
    }
}

fn kernel_or_skip(obj: &Object, what: &str) -> Option<KernelObject> {
    match KernelObject::load(obj) {
        Ok(k) => Some(k),
        Err(e) => {
            println!("skipping the kernel side of {what}: {e}");
            None
        }
    }
}

/// Loads `example` into a fresh region with its links; the region is removed on drop.
struct Ours {
    name: String,
    region: Arc<ShmRegion>,
}

impl Ours {
    fn new(tag: &str, example: &str, engine: EngineKind) -> Ours {
        let name = format!("bpftime-kcmp-{tag}-{}", std::process::id());
        let _ = ShmRegion::remove(&name);
        let region = Arc::new(ShmRegion::create(&name, 16 << 20).unwrap());
        let obj = Object::parse(&std::fs::read(build_example(example)).unwrap()).unwrap();
        let loaded = Runtime::new(region.clone(), engine).load_object(&obj).unwrap();
        links::store_uprobes(&region, &loaded.programs).unwrap();
        Ours { name, region }
    }

    fn map(&self, name: &str) -> Map {
        Map::open_by_name(&self.region, name).unwrap()
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = ShmRegion::remove(&self.name);
    }
}

/// The first `n` values of an array map of u64s.
fn u64s(m: &Map, n: u32) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let mut v = [0u8; 8];
            m.lookup(&i.to_le_bytes(), &mut v).unwrap();
            u64::from_le_bytes(v)
        })
        .collect()
}

fn u64_at(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

#[test]
fn probe_read_user_str_leaves_what_the_kernel_leaves() {
    let obj_path = build_example("read_str");
    let obj = Object::parse(&std::fs::read(&obj_path).unwrap()).unwrap();
    let target = build_target("strings", false);
    let Some(mut k) = kernel_or_skip(&obj, "bpf_probe_read_user_str") else { return };
    k.attach_uprobe("on_take", &target, "take", false).expect("kernel uprobe");
    let out = run_released(&target, &[], &[], |_| {});
    assert!(out.status.success(), "{out:?}");
    let hits = u32::from_le_bytes(k.lookup("hits", &0u32.to_le_bytes(), 4).unwrap().try_into().unwrap());
    assert!(hits >= 20, "the kernel saw {hits} calls");
    let kernel_records: Vec<Vec<u8>> = (0..hits).map(|i| k.lookup("records", &i.to_le_bytes(), 24).unwrap()).collect();
    let mut kernel_keys = k.keys("keys", 16);
    kernel_keys.sort();
    drop(k);
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let ours = Ours::new(&format!("str-{engine}"), "read_str", kind);
        let agent = agent();
        let env = [("LD_PRELOAD", agent.to_str().unwrap()), ("BPFTIME_SHM", ours.name.as_str()), ("BPFTIME_ENGINE", engine)];
        let out = run_released(&target, &[], &env, |_| {});
        assert!(out.status.success(), "{out:?}");
        let mut n = [0u8; 4];
        ours.map("hits").lookup(&0u32.to_le_bytes(), &mut n).unwrap();
        assert_eq!(u32::from_le_bytes(n), hits, "{engine}: calls seen");
        for (i, want) in kernel_records.iter().enumerate() {
            let mut got = vec![0u8; 24];
            ours.map("records").lookup(&(i as u32).to_le_bytes(), &mut got).unwrap();
            assert_eq!(&got, want, "{engine}: call {i}: result {} vs the kernel's {}", u64_at(&got) as i64, u64_at(want) as i64);
        }
        let mut keys = ours.map("keys").keys();
        keys.sort();
        assert_eq!(keys, kernel_keys, "{engine}: string keys");
    }
}

#[test]
fn the_agent_adds_no_free_calls_of_its_own() {
    let obj = Object::parse(&std::fs::read(build_example("free_count")).unwrap()).unwrap();
    let target = build_target("frees", false);
    let n = "1000";
    let Some(mut k) = kernel_or_skip(&obj, "the free() count") else { return };
    let out = run_released(&target, &[n], &[], |pid| {
        let libc = mapped_library(pid, "libc.so").expect("libc mapped");
        k.update("target", &0u32.to_le_bytes(), &pid.to_le_bytes()).unwrap();
        k.attach_uprobe("count_free", &libc, "free", false).expect("kernel uprobe on free");
    });
    assert!(out.status.success(), "{out:?}");
    let kernel = u64_at(&k.lookup("frees", &0u32.to_le_bytes(), 8).unwrap());
    drop(k);
    assert!(kernel >= 2000, "the kernel counted {kernel} free() calls");
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let ours = Ours::new(&format!("free-{engine}"), "free_count", kind);
        let agent = agent();
        let env = [("LD_PRELOAD", agent.to_str().unwrap()), ("BPFTIME_SHM", ours.name.as_str()), ("BPFTIME_ENGINE", engine)];
        let out = run_released(&target, &[n], &env, |_| {});
        assert!(out.status.success(), "{out:?}");
        let mut v = [0u8; 8];
        ours.map("frees").lookup(&0u32.to_le_bytes(), &mut v).unwrap();
        assert_eq!(u64::from_le_bytes(v), kernel, "{engine}: free() calls, ours vs the kernel's");
    }
}

/// Return probes on functions left by `longjmp` and `siglongjmp` (out of a signal handler):
/// their returns never come, and the frames they leave behind must not fill up anything. After
/// 5,000 rounds of three such exits each (more than our shadow stack's 4,096 frames), every
/// return of a function that does return is seen, as on the kernel: the same counts, in both
/// ways we catch returns (patched `ret`s, and the return address replaced at entry).
#[test]
fn return_probes_outlive_functions_left_by_longjmp_like_the_kernel() {
    let obj = Object::parse(&std::fs::read(build_example("uprobe_longjmp")).unwrap()).unwrap();
    let target = build_target("longjmps", false);
    let n = "5000";
    let mut kernel = None;
    if let Some(mut k) = kernel_or_skip(&obj, "return probes left by longjmp") {
        for f in ["fails", "outer", "escape", "ok"] {
            k.attach_uprobe(&format!("{f}_entry"), &target, f, false).expect("kernel uprobe");
            k.attach_uprobe(&format!("{f}_return"), &target, f, true).expect("kernel uretprobe");
        }
        let out = run_released(&target, &[n], &[], |_| {});
        assert!(out.status.success(), "{out:?}");
        kernel = Some((0..9u32).map(|i| u64_at(&k.lookup("jump_stats", &i.to_le_bytes(), 8).unwrap())).collect::<Vec<u64>>());
    }
    // Entries (fails also from outer), no returns of the three that jump, every return of ok().
    let expected = vec![10000, 0, 5000, 0, 5000, 0, 100, 100, (0..100).map(|i| 3 * i + 1).sum()];
    if let Some(k) = &kernel {
        assert_eq!(k, &expected, "the kernel's counts");
    }
    under_the_agent("longjmp", "uprobe_longjmp", &target, &[n], |what, _, ours| {
        let got = u64s(&ours.map("jump_stats"), 9);
        assert_eq!(got, expected, "{what}: entries and returns of fails, outer, escape, ok; ok's result sum");
    });
}

/// A signal whose handler leaves by `siglongjmp` lands, every 100 us, wherever the thread is,
/// as it calls add() 300,000 times. On the kernel a call's entry probe runs if the call
/// began (its first instruction, the int3, ran; the handler finds the thread past it), and not
/// if the signal came before: every call is seen but those the target judges cut short before
/// they began. Ours run the same, also where the signal lands in a probe's stub before the
/// programs begin (it waits for them: a signal there once lost that call's entry).
#[test]
fn a_signal_as_a_call_begins_leaves_its_entry_probe_as_on_the_kernel() {
    let obj = Object::parse(&std::fs::read(build_example("uprobe_signals")).unwrap()).unwrap();
    let target = build_target("entries", false);
    let n = "300000";
    // "calls C missed M jumps J": the entries a probe sees are C - M.
    let expected_entries = |out: &std::process::Output| -> (u64, u64) {
        let words: Vec<u64> = text(&out.stdout).split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert_eq!(words.len(), 3, "{out:?}");
        assert!(words[2] > 50, "the timer fired while the loop ran: {out:?}");
        (words[0] - words[1], words[2])
    };
    if let Some(mut k) = kernel_or_skip(&obj, "entry probes cut short by signals") {
        k.attach_uprobe("on_add", &target, "add", false).expect("kernel uprobe");
        let out = run_released(&target, &[n], &[], |_| {});
        assert!(out.status.success(), "{out:?}");
        let (expected, jumps) = expected_entries(&out);
        let seen = u64_at(&k.lookup("signal_stats", &0u32.to_le_bytes(), 8).unwrap());
        assert_eq!(seen, expected, "the kernel's entries ({jumps} jumps)");
    }
    under_the_agent("entries", "uprobe_signals", &target, &[n], |what, out, ours| {
        let (expected, jumps) = expected_entries(out);
        assert_eq!(u64s(&ours.map("signal_stats"), 1)[0], expected, "{what}: entries ({jumps} jumps)");
    });
}

/// Return probes on C++ functions left by an exception. The unwinder finds each caller by its
/// frame's return address; the kernel's uretprobes replace it with their trampoline, which the
/// unwinder cannot get past, so on the kernel this process dies in `std::terminate` (checked
/// here when the kernel can be used). Ours must not: the exception is caught where it would be
/// without probes, the functions it leaves do not return (no return probe runs for them), and
/// every function that does return, the catching one included, has its return probe run. In
/// both ways we catch returns (patched `ret`s, and the return address replaced at entry).
#[test]
fn exceptions_pass_through_return_probes() {
    let obj = Object::parse(&std::fs::read(build_example("uprobe_throws")).unwrap()).unwrap();
    let target = build_target("throws", false);
    let n = "1000";
    if let Some(mut k) = kernel_or_skip(&obj, "return probes left by exceptions") {
        k.attach_uprobe("thrower_return", &target, "_Z7throweri", true).expect("kernel uretprobe");
        let out = run_released(&target, &[n], &[], |_| {});
        assert!(!out.status.success() && text(&out.stderr).contains("terminate"), "the kernel's uretprobe: {out:?}");
    }
    // Entries and returns of thrower, mid and catcher; the sum of catcher's results (mid's
    // i + 1 for even i, -1 for the 500 caught).
    let sum: i64 = (0..1000).map(|i| if i % 2 == 0 { i + 1 } else { -1 }).sum();
    let expected = vec![1000, 500, 1000, 500, 1000, 1000, sum as u64];
    under_the_agent("throws", "uprobe_throws", &target, &[n], |what, out, ours| {
        assert_eq!(text(&out.stdout).trim(), format!("{sum} 500"), "{what}: the program's own output");
        let got = u64s(&ours.map("throw_stats"), 7);
        assert_eq!(got, expected, "{what}: entries and returns of thrower, mid, catcher; catcher's result sum");
    });
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Return probes on functions that return twice (libc's `vfork` and `_setjmp`). Both keep their
/// return address (vfork in a register across the system call, setjmp in the `jmp_buf`) and
/// return through it again: the vfork child first, then the parent; setjmp once, then once for
/// each `longjmp` back. A shadow frame popped at the first return would be gone at the second
/// (the process was aborted); each call site gets a return stub of its own instead, and every
/// return runs the probe, as the kernel does for vfork (it copies the pending returns into a
/// vfork child). For setjmp the kernel sends SIGILL at the second return; we do not.
#[test]
fn return_probes_on_functions_that_return_twice_run_at_each_return() {
    let target = build_target("twice", false);
    under_the_agent("twice", "uprobe_twice", &target, &["20", "30"], |what, out, ours| {
        assert_eq!(text(&out.stdout).trim(), "20 30", "{what}: the program's own output");
        let got = u64s(&ours.map("twice_returns"), 4);
        // The C library's start-up calls _setjmp once more, before main (its first return).
        assert_eq!((got[0], got[1], got[3]), (20, 20, 30), "{what}: vfork returns in children and parents, setjmp returns by longjmp: {got:?}");
        assert!((30..=31).contains(&got[2]), "{what}: first returns of setjmp: {got:?}");
    });
}

/// Return probes on a function whose calls switch coroutines (`swapcontext`) in the middle:
/// frames of two stacks interleave, and the older call returns first. Each return is matched
/// to its own call (a frame of another stack is not taken for one a longjmp abandoned), so the
/// counts and result sums are exact, in both ways we catch returns. (Not compared with the
/// kernel: its uretprobes, which drop pending returns by stack pointer, send this program into
/// an endless loop.)
#[test]
fn return_probes_follow_coroutines_across_stacks() {
    let target = build_target("coroutines", false);
    let rounds = 200u64;
    let sum_a: u64 = (0..rounds).sum();
    let expected = vec![rounds, rounds, rounds, rounds, sum_a, 1000 * rounds + sum_a];
    under_the_agent("coro", "uprobe_coroutines", &target, &[&rounds.to_string()], |what, out, ours| {
        assert_eq!(text(&out.stdout).trim(), format!("{} {}", expected[4], expected[5]), "{what}: the program's own output");
        assert_eq!(u64s(&ours.map("step_stats"), 6), expected, "{what}: calls and returns per coroutine, result sums");
    });
}

/// `bpf_get_stack` and `bpf_get_stackid` in uprobes and a uretprobe on the frames target, with
/// every flag the kernel takes and some it refuses: the same results, frames (as distances
/// from the probed instruction, the same in every run), build-id records (file offsets and
/// build ids, also of libc's frames) and stack-map contents as the kernel's. In both ways we
/// catch returns: with the return address replaced at entry, the walk from `inner` crosses
/// the frame of `outer` whose return address is our stub.
#[test]
fn stack_helpers_return_what_the_kernel_returns() {
    let obj = Object::parse(&std::fs::read(build_example("stacks")).unwrap()).unwrap();
    let target = build_target("frames", false);
    // Slots 16 and 23 hold stack ids, which are ours to choose: compared by what they name.
    let results = |lookup: &dyn Fn(u32) -> Vec<u8>| -> Vec<i64> { (0..32u32).map(|i| u64_at(&lookup(i)) as i64).collect::<Vec<i64>>() };
    let without_ids = |mut r: Vec<i64>| {
        r[16] = (r[16] >= 0) as i64;
        r[23] = (r[23] >= 0) as i64;
        r
    };
    // The executable's three frames of an address stack, as distances from the first.
    let distances = |v: &[u8]| -> Vec<i64> { (0..3).map(|i| u64_at(&v[i * 8..]).wrapping_sub(u64_at(v)) as i64).collect() };
    let Some(mut k) = kernel_or_skip(&obj, "stack helpers") else { return };
    k.attach_uprobe("outer_entry", &target, "outer", false).expect("kernel uprobe");
    k.attach_uprobe("inner_entry", &target, "inner", false).expect("kernel uprobe");
    k.attach_uprobe("outer_return", &target, "outer", true).expect("kernel uretprobe");
    let out = run_released(&target, &["20"], &[], |_| {});
    assert!(out.status.success(), "{out:?}");
    let kernel = results(&|i| k.lookup("stack_results", &i.to_le_bytes(), 8).unwrap());
    let kernel_stack = distances(&k.lookup("user_stacks", &(kernel[16] as u32).to_le_bytes(), 64).unwrap());
    let kernel_build_ids = k.lookup("build_id_stacks", &(kernel[23] as u32).to_le_bytes(), 128).unwrap();
    drop(k);
    let kernel = without_ids(kernel);
    // What the kernel does here: three frames, an empty kernel stack (a zeroed buffer, -EFAULT
    // for an id), -EINVAL for unknown flags, build ids of a file with one (status 1).
    for (slot, want) in [
        (0, 24),
        (3, 0),
        (4, 0),
        (5, -22),
        (6, 0),
        (7, 64),
        (8, 1),
        (9, 1),
        (11, 16),
        (13, -22),
        (14, -22),
        (15, -14),
        (16, 1),
        (17, -22),
        (20, 24),
        (23, 1),
        (24, 16),
    ] {
        assert_eq!(kernel[slot], want, "the kernel's slot {slot}: {kernel:?}");
    }
    under_the_agent("stacks", "stacks", &target, &["20"], |what, _, ours| {
        let r = results(&|i| {
            let mut v = vec![0u8; 8];
            ours.map("stack_results").lookup(&i.to_le_bytes(), &mut v).unwrap();
            v
        });
        let mut stack = vec![0u8; 64];
        ours.map("user_stacks").lookup(&(r[16] as u32).to_le_bytes(), &mut stack).unwrap();
        let mut build_ids = vec![0u8; 128];
        ours.map("build_id_stacks").lookup(&(r[23] as u32).to_le_bytes(), &mut build_ids).unwrap();
        assert_eq!(without_ids(r), kernel, "{what}: results and frames, then the kernel's");
        assert_eq!(distances(&stack), kernel_stack, "{what}: the stack map's frames");
        assert_eq!(build_ids, kernel_build_ids, "{what}: the build-id stack map's records");
    });
}

/// `bpf_map_lookup_percpu_elem` (every CPU's slot of a per-CPU array and hash, summed; a CPU
/// past the possible ones finds nothing) and `bpf_get_numa_node_id`, on every call of a
/// function: the same results as the kernel's.
#[test]
fn per_cpu_lookups_by_cpu_sum_what_the_kernel_sums() {
    let obj = Object::parse(&std::fs::read(build_example("percpu_lookup")).unwrap()).unwrap();
    let target = build_target("frames", false);
    let calls = 100u64;
    // inner() runs twice per outer(): once per round, twice.
    let expected = [2 * calls, 2 * calls, bpftime_maps::possible_cpus() as u64, 0, 0, 2 * calls];
    if let Some(mut k) = kernel_or_skip(&obj, "per-CPU lookups by CPU") {
        k.attach_uprobe("count_inner", &target, "inner", false).expect("kernel uprobe");
        let out = run_released(&target, &[&calls.to_string()], &[], |_| {});
        assert!(out.status.success(), "{out:?}");
        let kernel: Vec<u64> = (0..6u32).map(|i| u64_at(&k.lookup("percpu_results", &i.to_le_bytes(), 8).unwrap())).collect();
        assert_eq!(kernel, expected, "the kernel's");
    }
    under_the_agent("percpu", "percpu_lookup", &target, &[&calls.to_string()], |what, _, ours| {
        assert_eq!(u64s(&ours.map("percpu_results"), 6), expected, "{what}");
    });
}

/// `bpf_get_ns_current_pid_tgid`: the pid and tgid in the caller's pid namespace, -EINVAL and
/// zeroes for another namespace or a wrong size, as the kernel's.
#[test]
fn namespace_pids_are_the_kernels() {
    use std::os::unix::fs::MetadataExt;
    let obj = Object::parse(&std::fs::read(build_example("pidns")).unwrap()).unwrap();
    let target = build_target("frames", false);
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    // Each run: the results and the target's pid.
    let results = |lookup: &dyn Fn(u32) -> u64, pid: u32| -> Vec<i64> {
        let r: Vec<i64> = (0..6).map(|i| lookup(i) as i64).collect();
        vec![r[0], (r[1] == pid as i64) as i64, (r[2] == pid as i64) as i64, r[3], r[4], r[5]]
    };
    let expected = vec![0, 1, 1, -(libc::EINVAL as i64), 0, -(libc::EINVAL as i64)];
    if let Some(mut k) = kernel_or_skip(&obj, "namespace pids") {
        k.update("pidns_in", &0u32.to_le_bytes(), &ns.dev().to_le_bytes()).unwrap();
        k.update("pidns_in", &1u32.to_le_bytes(), &ns.ino().to_le_bytes()).unwrap();
        k.attach_uprobe("ns_ids", &target, "inner", false).expect("kernel uprobe");
        let mut pid = 0;
        let out = run_released(&target, &["3"], &[], |p| pid = p);
        assert!(out.status.success(), "{out:?}");
        let got = results(&|i| u64_at(&k.lookup("pidns_results", &i.to_le_bytes(), 8).unwrap()), pid);
        assert_eq!(got, expected, "the kernel's");
    }
    for (engine, kind) in [("jit", EngineKind::Jit), ("interp", EngineKind::Interp)] {
        let ours = Ours::new(&format!("pidns-{engine}"), "pidns", kind);
        ours.map("pidns_in").update(&0u32.to_le_bytes(), &ns.dev().to_le_bytes(), 0).unwrap();
        ours.map("pidns_in").update(&1u32.to_le_bytes(), &ns.ino().to_le_bytes(), 0).unwrap();
        let agent = agent();
        let env = [("LD_PRELOAD", agent.to_str().unwrap()), ("BPFTIME_SHM", ours.name.as_str()), ("BPFTIME_ENGINE", engine)];
        let mut pid = 0;
        let out = run_released(&target, &["3"], &env, |p| pid = p);
        assert!(out.status.success(), "{out:?}");
        let got = results(
            &|i| {
                let mut v = [0u8; 8];
                ours.map("pidns_results").lookup(&i.to_le_bytes(), &mut v).unwrap();
                u64::from_le_bytes(v)
            },
            pid,
        );
        assert_eq!(got, expected, "{engine}");
    }
}
