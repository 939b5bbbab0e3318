//! Several processes sharing one region: exact totals from concurrent atomic adds, and a map
//! that stays usable after writers are SIGKILLed in the middle of updates.
//!
//! Workers are this test binary run again with `BPFTIME_MP_ROLE` set (see `worker`).

use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::build_example;
use bpftime_vm::exec::Context;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: u32 = 4;
const ITERS: u32 = 200_000;

/// Runs as a worker when spawned by the tests below; does nothing otherwise.
#[test]
fn worker() {
    let Ok(role) = std::env::var("BPFTIME_MP_ROLE") else { return };
    let shm = std::env::var("BPFTIME_MP_SHM").expect("region name");
    let prog_id: u32 = std::env::var("BPFTIME_MP_PROG").unwrap().parse().unwrap();
    let region = Arc::new(ShmRegion::open(&shm).expect("open region"));
    let rt = Runtime::new(region, EngineKind::Jit);
    let prog = rt.program(prog_id).expect("program");
    let seed: u32 = std::env::var("BPFTIME_MP_SEED").unwrap().parse().unwrap();
    let iters = if role == "forever" { u32::MAX } else { ITERS };
    for i in 0..iters {
        let mut key = ((i.wrapping_mul(7).wrapping_add(seed)) % 16).to_le_bytes();
        assert_eq!(rt.run(&prog, Context::Mem(&mut key), 0, 0, false), Ok(0));
    }
}

fn spawn(role: &str, shm: &str, prog: u32, seed: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "worker", "--nocapture", "--test-threads=1"])
        .env("BPFTIME_MP_ROLE", role)
        .env("BPFTIME_MP_SHM", shm)
        .env("BPFTIME_MP_PROG", prog.to_string())
        .env("BPFTIME_MP_SEED", seed.to_string())
        .spawn()
        .expect("spawn worker")
}

struct Region(String);

impl Drop for Region {
    fn drop(&mut self) {
        let _ = ShmRegion::remove(&self.0);
    }
}

fn setup(tag: &str) -> (Region, Arc<ShmRegion>, Runtime, Vec<Map>, Vec<(String, String, u32)>) {
    let name = format!("bpftime-mp-{tag}-{}", std::process::id());
    let _ = ShmRegion::remove(&name);
    let region = Arc::new(ShmRegion::create(&name, 16 << 20).unwrap());
    let obj = Object::parse(&std::fs::read(build_example("hammer")).unwrap()).unwrap();
    let rt = Runtime::new(region.clone(), EngineKind::Jit);
    let loaded = rt.load_object(&obj).unwrap();
    (Region(name), region, rt, loaded.maps, loaded.programs)
}

fn u64_value(m: &Map, key: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    m.lookup(key, &mut v).map(|_| u64::from_le_bytes(v)).unwrap_or(0)
}

#[test]
fn concurrent_processes_get_exact_totals() {
    let (guard, _region, _rt, maps, progs) = setup("sum");
    let add = progs.iter().find(|p| p.0 == "add").unwrap().2;
    let children: Vec<Child> = (0..WORKERS).map(|i| spawn("add", &guard.0, add, i)).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }
    let counts = &maps[0];
    let total = &maps[1];
    assert_eq!(u64_value(total, &0u32.to_le_bytes()), (WORKERS * ITERS) as u64, "array total");
    let keys = counts.keys();
    assert_eq!(keys.len(), 16);
    let sum: u64 = keys.iter().map(|k| u64_value(counts, k)).sum();
    assert_eq!(sum, (WORKERS * ITERS) as u64, "hash total");
    // Each worker's keys follow (7i + seed) % 16: every key gets ITERS/16 per worker.
    for k in &keys {
        assert_eq!(u64_value(counts, k), (WORKERS * ITERS / 16) as u64, "key {k:?}");
    }
}

#[test]
fn killed_writers_leave_the_map_usable() {
    let (guard, _region, rt, maps, progs) = setup("kill");
    let overwrite = progs.iter().find(|p| p.0 == "overwrite").unwrap().2;
    // Kill writers at random moments while they replace and delete values under the lock.
    for round in 0..12u32 {
        let mut c = spawn("forever", &guard.0, overwrite, round);
        std::thread::sleep(Duration::from_millis(40 + (round as u64 * 13) % 50));
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // The map still works, promptly, for this process...
    let counts = &maps[0];
    let start = Instant::now();
    for k in 0..16u32 {
        counts.update(&k.to_le_bytes(), &(k as u64).to_le_bytes(), 0).expect("update after kills");
    }
    assert!(start.elapsed() < Duration::from_secs(5), "updates were blocked");
    // ...it is consistent: each key once, the values just written...
    let keys = counts.keys();
    assert_eq!(keys.len(), 16, "{keys:?}");
    for k in 0..16u32 {
        assert_eq!(u64_value(counts, &k.to_le_bytes()), k as u64);
    }
    // ...and it has its full capacity: fill it to max_entries, then one more is E2BIG.
    for k in 16..64u32 {
        counts.update(&k.to_le_bytes(), &0u64.to_le_bytes(), 0).expect("capacity kept");
    }
    assert_eq!(counts.update(&99u32.to_le_bytes(), &0u64.to_le_bytes(), 0), Err(bpftime_maps::Errno::E2BIG));
    // And programs in other processes can still use it.
    let add = progs.iter().find(|p| p.0 == "add").unwrap().2;
    let mut c = spawn("add", &guard.0, add, 0);
    assert!(c.wait().unwrap().success());
    let _ = rt;
}
