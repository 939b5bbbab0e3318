//! A region is shared memory that other processes and the programs themselves can write, so
//! nothing read from it is trusted. This fuzzes a valid region (maps of every kind, programs,
//! links, a trace pipe): words of its header, object table and descriptors are overwritten
//! with boundary values, then every reader runs on it — in this process (maps, programs,
//! links, the trace pipe, the allocator) and as processes (every `bpftime` command and the
//! agent in a traced program). None may panic, abort, take a signal or hang.

use bpftime_maps::{Map, MapType};
use bpftime_object::Object;
use bpftime_runtime::trace::TracePipe;
use bpftime_runtime::{links, progs, EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::{build_example, build_target};
use bpftime_vm::exec::Context;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

// Small: maps registered for programs stay mapped for the life of the process (`map_ref`).
const SIZE: u64 = 2 << 20;
const EXAMPLES: [&str; 5] = ["uprobe_calls", "map_in_map", "ringbuf_events", "maps_globals", "tail_calls"];

use bpftime_tests::rng::Rng;

/// Fills `region` with maps, programs, links and trace lines.
fn populate(region: &Arc<ShmRegion>) {
    let rt = Runtime::new(region.clone(), EngineKind::Interp);
    for name in EXAMPLES {
        let obj = Object::parse(&std::fs::read(build_example(name)).unwrap()).unwrap();
        let loaded = rt.load_object(&obj).unwrap_or_else(|e| panic!("{name}: {e}"));
        links::store_uprobes(region, &loaded.programs).unwrap();
        for m in &loaded.maps {
            if matches!(m.map_type(), MapType::Hash | MapType::LruHash | MapType::PercpuHash) && m.spec().key_size == 4 {
                let _ = m.update(&7u32.to_le_bytes(), &vec![1u8; m.syscall_value_size()], 0);
            }
        }
    }
    let pipe = TracePipe::open(region).unwrap();
    for i in 0..20 {
        pipe.write(format!("line {i}").as_bytes());
    }
}

/// Offsets worth scribbling on: the header, the live table entries, every descriptor.
fn targets(region: &Arc<ShmRegion>) -> Vec<(u64, u64)> {
    // The header and the used part of the object table, then every descriptor.
    let used = region.objects().len() as u64 + 4;
    let mut t = vec![(8, 1024), (8, ShmRegion::table_end() * used / 1024)];
    for o in region.objects() {
        t.push((o.data, 256));
    }
    // Map storage: the first elements, and ring and perf positions (programs write these too).
    for m in Map::list(region) {
        let (addr, len) = m.value_region();
        let data = addr - region.base() as u64;
        t.push((data, len.min(512)));
        if m.map_type() == MapType::Ringbuf {
            t.push((data - 2 * 4096, 16));
            t.push((data - 4096, 16));
        }
    }
    t
}

/// Overwrites `n` aligned words inside `targets` with boundary values.
fn scribble(region: &ShmRegion, targets: &[(u64, u64)], rng: &mut Rng, n: usize) {
    let size = region.size();
    for _ in 0..n {
        let (start, len) = targets[rng.below(targets.len() as u64) as usize];
        let off = (start + rng.below(len)) & !7;
        let mut old = [0u8; 8];
        if !region.read(off, &mut old) {
            continue;
        }
        let old = u64::from_le_bytes(old);
        let values = [
            0,
            1,
            8,
            size - 8,
            size,
            size + 8,
            size - 16,
            u64::MAX,
            u32::MAX as u64,
            1 << 63,
            old ^ 1 << rng.below(64),
            old.wrapping_add(8),
            old.wrapping_sub(8),
            rng.next_u64(),
        ];
        let v = values[rng.below(values.len() as u64) as usize];
        if rng.below(2) == 0 {
            region.write(off, &v.to_le_bytes());
        } else {
            region.write(off, &(v as u32).to_le_bytes());
        }
    }
}

/// Everything a reader of the region does, in this process.
fn exercise(region: &Arc<ShmRegion>) {
    let _ = region.objects();
    for m in Map::list(region) {
        let keys = m.keys();
        let mut v = vec![0u8; m.syscall_value_size()];
        for k in keys.iter().take(64) {
            let _ = m.lookup(k, &mut v);
        }
        let _ = (m.len(), m.lost(), m.queue_items(), m.value_region());
        let mut next = vec![0u8; m.spec().key_size as usize];
        let _ = m.next_key(None, &mut next);
        m.ringbuf_consume(&mut |_| {});
        m.perf_consume(&mut |_| {});
        if m.spec().key_size == 4 {
            let _ = m.update(&3u32.to_le_bytes(), &v, 0);
            let _ = m.delete(&3u32.to_le_bytes());
        }
    }
    let rt = Runtime::new(region.clone(), EngineKind::Jit);
    for p in progs::list(region) {
        if let Ok(prog) = rt.program(p.id) {
            let mut ctx = [0u8; 256];
            let _ = rt.run(&prog, Context::Mem(&mut ctx), 0, 0, true);
        }
    }
    let _ = links::list(region);
    if let Some(pipe) = TracePipe::existing(region) {
        let _ = pipe.read_from(0);
        pipe.write(b"after");
    }
    if let Ok(a) = region.alloc(100) {
        region.free(a);
    }
    let _ = region.alloc(1 << 20).map(|a| region.free(a));
}

#[test]
fn scribbled_regions_never_crash_a_reader_in_this_process() {
    let pristine = Arc::new(ShmRegion::anonymous(SIZE).unwrap());
    populate(&pristine);
    let mut image = vec![0u8; SIZE as usize];
    assert!(pristine.read(8, &mut image[8..]));
    let targets = targets(&pristine);
    // BPFTIME_FUZZ_ITERATIONS runs more (and other seeds) by hand.
    let iterations: usize = std::env::var("BPFTIME_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut failures = vec![];
    for i in 0..iterations {
        let region = Arc::new(ShmRegion::anonymous(SIZE).unwrap());
        assert!(region.write(8, &image[8..]));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x0100_0000_01b3));
        scribble(&region, &targets, &mut rng, 1 + i % 16);
        if let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(|| exercise(&region))) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            failures.push(format!("iteration {i}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{} of {iterations} scribbled regions panicked a reader:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn scribbled_regions_never_crash_a_command_or_the_agent() {
    let bpftime = bpftime_tests::repo_root().join("target/debug/bpftime");
    let agent = bpftime_tests::repo_root().join("target/debug/libbpftime.so");
    if !bpftime.exists() || !agent.exists() {
        panic!("build the workspace first (cargo build --workspace): {} and {} are needed", bpftime.display(), agent.display());
    }
    let target = build_target("calls", false);
    let obj = build_example("uprobe_calls");
    let name = format!("bpftime-fuzz-{}", std::process::id());
    let _ = ShmRegion::remove(&name);
    let mut image = vec![0u8; SIZE as usize];
    let targets = {
        let r = Arc::new(ShmRegion::create(&name, SIZE).unwrap());
        populate(&r);
        assert!(r.read(8, &mut image[8..]));
        targets(&r)
    };
    let commands: Vec<Vec<String>> = {
        let mut c: Vec<Vec<&str>> = vec![
            vec!["shm", "info"],
            vec!["map", "list"],
            vec!["map", "list", "--json"],
            vec!["prog", "list"],
            vec!["trace", "--no-follow"],
            vec!["load", obj.to_str().unwrap()],
        ];
        let ids: Vec<String> = (1..=14).map(|i| i.to_string()).collect();
        for id in &ids {
            c.push(vec!["map", "dump", id]);
        }
        c.into_iter().map(|v| v.into_iter().map(String::from).collect()).collect()
    };
    let mut failures = vec![];
    for i in 0..30u64 {
        {
            let r = ShmRegion::open(&name).unwrap();
            assert!(r.write(8, &image[8..]));
            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((i + 1) * 0x9e37_79b9));
            scribble(&r, &targets, &mut rng, 1 + (i % 6) as usize);
        }
        let mut runs: Vec<(String, std::process::Output)> = vec![];
        for args in &commands {
            let out = std::process::Command::new(&bpftime).arg("--shm").arg(&name).args(args).output().unwrap();
            runs.push((format!("bpftime {}", args.join(" ")), out));
        }
        let out = std::process::Command::new(&target).args(["50", "2"]).env("LD_PRELOAD", &agent).env("BPFTIME_SHM", &name).output().unwrap();
        if !String::from_utf8_lossy(&out.stdout).starts_with("sum 7350 fact 3628800") {
            failures.push(format!("iteration {i}: the traced program's output changed: {:?}", String::from_utf8_lossy(&out.stdout)));
        }
        runs.push(("agent in calls".into(), out));
        for (what, out) in runs {
            let err = String::from_utf8_lossy(&out.stderr);
            let bad = out.status.code().is_none() || matches!(out.status.code(), Some(101 | 134)) || err.contains("panicked");
            if bad {
                failures.push(format!("iteration {i}: {what}: {:?}\n{err}", out.status));
            }
        }
    }
    let _ = ShmRegion::remove(&name);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
