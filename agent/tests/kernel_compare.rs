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
    // Wait until the process has mapped its libraries (it blocks in read() after that).
    let pid = child.id();
    for _ in 0..200 {
        if std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("read") || w.contains("wait")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    setup(pid);
    child.stdin.take().unwrap().write_all(b"x").unwrap();
    child.wait_with_output().unwrap()
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
