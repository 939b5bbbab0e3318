//! Clang-built objects with maps, globals, helpers, tail calls, ring buffers, map-in-map and
//! CO-RE, loaded into a region and run on both engines.

use bpftime_maps::{Map, MapType};
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, LoadedObject, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::build_example;
use bpftime_vm::exec::Context;
use std::sync::Arc;

fn load(name: &str, engine: EngineKind) -> (Runtime, LoadedObject) {
    let obj = Object::parse(&std::fs::read(build_example(name)).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(32 << 20).unwrap()), engine);
    let loaded = rt.load_object(&obj).unwrap_or_else(|e| panic!("{name}: {e}"));
    (rt, loaded)
}

fn map<'a>(l: &'a LoadedObject, name: &str) -> &'a Map {
    l.maps.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("no map {name}"))
}

fn prog_id(l: &LoadedObject, name: &str) -> u32 {
    l.programs.iter().find(|p| p.0 == name).unwrap_or_else(|| panic!("no program {name}")).2
}

fn u64_at(m: &Map, key: &[u8]) -> Option<u64> {
    let mut v = vec![0u8; m.syscall_value_size()];
    m.lookup(key, &mut v).ok()?;
    Some(u64::from_le_bytes(v[..8].try_into().unwrap()))
}

const ENGINES: [EngineKind; 2] = [EngineKind::Jit, EngineKind::Interp];

#[test]
fn maps_and_globals() {
    for engine in ENGINES {
        let (rt, l) = load("maps_globals", engine);
        let prog = rt.program(prog_id(&l, "count")).unwrap();
        for (key, delta) in [(1u64, 1u64), (2, 5), (1, 10), (3, 0)] {
            let mut input = [key.to_le_bytes(), delta.to_le_bytes()].concat();
            let r = rt.run(&prog, Context::Mem(&mut input), 0, 0, false).unwrap();
            let scaled = delta * 3;
            let want_bucket = if scaled <= 1 { 0 } else { 63 - scaled.leading_zeros() as u64 };
            assert_eq!(r, want_bucket, "{engine:?} delta {delta}");
        }
        let counts = map(&l, "counts");
        assert_eq!(u64_at(counts, &1u64.to_le_bytes()), Some(33), "{engine:?}");
        assert_eq!(u64_at(counts, &2u64.to_le_bytes()), Some(15));
        assert_eq!(u64_at(counts, &3u64.to_le_bytes()), Some(0));
        assert_eq!(counts.keys().len(), 3);
        let hist = map(&l, "hist");
        assert_eq!(u64_at(hist, &1u32.to_le_bytes()), Some(1)); // 3
        assert_eq!(u64_at(hist, &3u32.to_le_bytes()), Some(1)); // 15
        assert_eq!(u64_at(hist, &4u32.to_le_bytes()), Some(1)); // 30
        assert_eq!(u64_at(hist, &0u32.to_le_bytes()), Some(1)); // 0
                                                                // Per-CPU: the runs are spread over the CPUs they ran on; the sum is exact.
        let stats = map(&l, "stats");
        let mut v = vec![0u8; stats.syscall_value_size()];
        stats.lookup(&0u32.to_le_bytes(), &mut v).unwrap();
        let total: u64 = v.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).sum();
        assert_eq!(total, 4);
        assert_eq!(map(&l, "recent").keys().len(), 3);
        let events = map(&l, "events");
        let mut popped = vec![];
        let mut v = [0u8; 8];
        while events.pop(&mut v).is_ok() {
            popped.push(u64::from_le_bytes(v));
        }
        assert_eq!(popped, vec![1, 2, 1, 3]);
        // Global data: .bss runs counter, .data last_key, .rodata kept.
        let bss = map(&l, ".bss");
        assert_eq!(u64_at(bss, &0u32.to_le_bytes()), Some(4));
        let data = map(&l, ".data");
        let mut d = vec![0u8; data.spec().value_size as usize];
        data.lookup(&0u32.to_le_bytes(), &mut d).unwrap();
        assert_eq!(u64::from_le_bytes(d[..8].try_into().unwrap()), 3, "last_key");
        assert!(d.windows(5).any(|w| w == b"hello"));
        let rodata = map(&l, ".rodata");
        assert_eq!(u64_at(rodata, &0u32.to_le_bytes()), Some(3), "scale");
        // bpf_printk wrote to the region's trace pipe.
        let pipe = bpftime_runtime::trace::TracePipe::existing(rt.region()).expect("trace pipe");
        let (lines, _) = pipe.read_from(0);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[1].ends_with("bpf_trace_printk: hello: key 2 += 15"), "{}", lines[1]);
    }
}

#[test]
fn tail_calls_and_bpf_loop() {
    for engine in ENGINES {
        let (rt, l) = load("tail_calls", engine);
        let dispatch = rt.program(prog_id(&l, "dispatch")).unwrap();
        let run = |op: u32, n: u32| {
            let mut input = [op.to_le_bytes(), n.to_le_bytes(), [0; 4], [0; 4]].concat();
            let r = rt.run(&dispatch, Context::Mem(&mut input), 0, 0, false).unwrap();
            (r as i32, u64::from_le_bytes(input[8..16].try_into().unwrap()))
        };
        assert_eq!(run(0, 0), (100, 0), "{engine:?}: tail call to stage0");
        assert_eq!(run(1, 10), (210, 45), "{engine:?}: stage1 ran bpf_loop 10 times summing 0..9");
        assert_eq!(run(2, 0), (-1, 0), "{engine:?}: empty slot: the tail call falls through");
        let hits = map(&l, "hits");
        assert_eq!(u64_at(hits, &3u32.to_le_bytes()), Some(3));
        assert_eq!(u64_at(hits, &0u32.to_le_bytes()), Some(1));
        assert_eq!(u64_at(hits, &1u32.to_le_bytes()), Some(1));
    }
}

#[test]
fn ringbuf_and_perf_events() {
    for engine in ENGINES {
        let (rt, l) = load("ringbuf_events", engine);
        let prog = rt.program(prog_id(&l, "emit")).unwrap();
        for seq in 0u64..6 {
            let mut input = seq.to_le_bytes();
            assert_eq!(rt.run(&prog, Context::Mem(&mut input), 0, 0, false), Ok(1));
        }
        let rb = map(&l, "rb");
        let mut records = vec![];
        rb.ringbuf_consume(&mut |r| records.push(r.to_vec()));
        // Each run: an event (discarded when seq % 4 == 3) and an 8-byte copy.
        assert_eq!(records.len(), 11, "{engine:?}");
        let events: Vec<&Vec<u8>> = records.iter().filter(|r| r.len() == 32).collect();
        assert_eq!(events.len(), 5);
        assert_eq!(u32::from_le_bytes(events[0][8..12].try_into().unwrap()), std::process::id());
        let copies: Vec<u64> = records.iter().filter(|r| r.len() == 8).map(|r| u64::from_le_bytes(r[..8].try_into().unwrap())).collect();
        assert_eq!(copies, vec![0, 10, 20, 30, 40, 50]);
        let mut perf = vec![];
        // The raw size counts the padding to whole 8-byte words, as the kernel's does: 8 bytes
        // of data come with 4 of padding.
        map(&l, "perf").perf_consume(&mut |r| {
            assert_eq!(r.data.len(), 12);
            perf.push(u64::from_le_bytes(r.data[..8].try_into().unwrap()))
        });
        perf.sort();
        assert_eq!(perf, vec![0, 10, 20, 30, 40, 50]);
        // Consumed: the ring is empty again.
        assert_eq!(rb.ringbuf_query(0), 0);
    }
}

#[test]
fn map_in_map_legacy_maps_and_lpm() {
    for engine in ENGINES {
        let (rt, l) = load("map_in_map", engine);
        let prog = rt.program(prog_id(&l, "route")).unwrap();
        let routes = map(&l, "routes");
        let mut key = 24u32.to_le_bytes().to_vec();
        key.extend_from_slice(&[10, 0, 1, 0]);
        routes.update(&key, &77u32.to_le_bytes(), 0).unwrap();
        let run = |which: u32, addr: [u8; 4]| {
            let mut input = [which.to_le_bytes(), addr].concat();
            rt.run(&prog, Context::Mem(&mut input), 0, 0, false).unwrap()
        };
        assert_eq!(run(1, [10, 0, 1, 9]), 77, "{engine:?}");
        assert_eq!(run(2, [10, 0, 2, 9]), 0);
        assert_eq!(run(2, [10, 0, 1, 200]), 77);
        assert_eq!(run(3, [1, 1, 1, 1]), 0);
        assert_eq!(u64_at(map(&l, "inner_a"), &0u32.to_le_bytes()), Some(1));
        assert_eq!(u64_at(map(&l, "inner_b"), &0u32.to_le_bytes()), Some(2));
        let legacy = map(&l, "legacy_counts");
        assert_eq!(legacy.map_type(), MapType::Array);
        assert_eq!(u64_at(legacy, &1u32.to_le_bytes()), Some(20));
    }
}

#[test]
fn core_relocations_follow_the_kernel_btf() {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        println!("skip: no /sys/kernel/btf/vmlinux");
        return;
    }
    for engine in ENGINES {
        let (rt, l) = load("core_pt_regs", engine);
        let prog = rt.program(prog_id(&l, "add_args")).unwrap();
        // A kernel-layout pt_regs: di at 112, si at 104.
        let mut regs = [0u8; 168];
        regs[112..120].copy_from_slice(&7u64.to_le_bytes());
        regs[104..112].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(rt.run(&prog, Context::ReadOnly(&regs), 0, 0, true), Ok(5007), "{engine:?}");
    }
}

#[test]
fn bad_objects_lose_nothing() {
    // A program calling a helper we do not provide is refused before any map is created.
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Jit);
    let mut obj = Object::parse(&std::fs::read(build_example("maps_globals")).unwrap()).unwrap();
    // Patch a call into helper 26 (bpf_perf_prog_read_value... not provided here).
    let p = &mut obj.programs[0];
    let call = p.insns.iter().position(|i| i.opc == 0x85 && i.src == 0).unwrap();
    p.insns[call].imm = 52; // bpf_sk_redirect_map
    let e = rt.load_object(&obj).unwrap_err().to_string();
    assert!(e.contains("helper 52 (bpf_sk_redirect_map) is not supported"), "{e}");
    assert!(rt.region().objects().is_empty(), "nothing was created");
    // A map type the runtime does not know.
    let mut obj = Object::parse(&std::fs::read(build_example("maps_globals")).unwrap()).unwrap();
    obj.maps[0].map_type = 15; // BPF_MAP_TYPE_SOCKMAP
    let e = rt.load_object(&obj).unwrap_err().to_string();
    assert!(e.contains("unknown map type 15"), "{e}");
    // A region too small for the maps: a clear error naming the map.
    let small = Runtime::new(Arc::new(ShmRegion::anonymous(1 << 20).unwrap()), EngineKind::Jit);
    let mut obj = Object::parse(&std::fs::read(build_example("maps_globals")).unwrap()).unwrap();
    obj.maps[0].max_entries = 1 << 20;
    let e = small.load_object(&obj).unwrap_err().to_string();
    assert!(e.contains("map `counts`") && e.contains("is full"), "{e}");
}

/// A program the verifier refuses fails alone, with its reason; the object's other programs
/// and maps load (libbpf loads programs one by one too). Only when every program is refused
/// does the whole object fail.
#[test]
fn a_refused_program_fails_alone() {
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Jit);
    let mut obj = Object::parse(&std::fs::read(build_example("uprobe_calls")).unwrap()).unwrap();
    assert!(obj.programs.len() > 1);
    let p = &mut obj.programs[0];
    let call = p.insns.iter().position(|i| i.opc == 0x85 && i.src == 0).unwrap();
    p.insns[call].imm = 52; // bpf_sk_redirect_map
    let refused_name = p.name.clone();
    let loaded = rt.load_object(&obj).unwrap();
    assert_eq!(loaded.refused.len(), 1);
    assert_eq!(loaded.refused[0].0, refused_name);
    assert!(loaded.refused[0].2.contains("helper 52 (bpf_sk_redirect_map) is not supported"), "{:?}", loaded.refused);
    assert_eq!(loaded.programs.len(), obj.programs.len() - 1, "the others are loaded");
    assert!(!loaded.programs.iter().any(|p| p.0 == refused_name));
}

/// Globals set before loading land at their symbols' offsets (clang leaves 0 in the BTF's
/// DATASEC; the symbol table has the truth, as libbpf knows).
#[test]
fn globals_are_set_at_their_offsets() {
    let mut obj = Object::parse(&std::fs::read(build_example("maps_globals")).unwrap()).unwrap();
    obj.set_global("scale", "5").unwrap();
    obj.set_global("last_key", "0x10").unwrap();
    obj.set_global("greeting", "hey").unwrap();
    let data = |name: &str| obj.maps.iter().find(|m| m.name == name).unwrap().initial.clone().unwrap();
    assert_eq!(&data(".rodata")[..8], &5u64.to_le_bytes());
    assert_eq!(&data(".data")[..8], &16u64.to_le_bytes());
    assert_eq!(&data(".data")[8..14], b"hey\0\0\0", "greeting is 8 bytes into .data");
    assert!(obj.set_global("greeting", "far too long").is_err());
    assert!(obj.set_global("scale", "x").unwrap_err().to_string().contains("not an integer"));
    assert!(obj.set_global("nope", "1").unwrap_err().to_string().contains("no such global variable"));
}

/// `__kconfig` externs (libbpf's usdt.bpf.h declares `LINUX_HAS_BPF_COOKIE`) get a read-only
/// `.kconfig` array with the values libbpf would give them; the program's loads point into it.
#[test]
fn kconfig_externs_are_resolved() {
    let obj = Object::parse(&std::fs::read(build_example("loader_usdt")).unwrap()).unwrap();
    let (i, kconfig) = obj.maps.iter().enumerate().find(|(_, m)| m.name == ".kconfig").expect("a .kconfig map");
    assert_eq!(kconfig.initial.as_deref().map(|b| b[0]), Some(1), "LINUX_HAS_BPF_COOKIE: bpftime has attach cookies");
    assert!(obj.programs[0].data_relocs.iter().any(|r| r.map == i && r.value_offset == Some(0)), "the program reads it");
    // And the object loads (the verifier sees an ordinary read-only value).
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(8 << 20).unwrap()), EngineKind::Interp);
    assert!(rt.load_object(&obj).unwrap().refused.is_empty());
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity(2) fills the set it is given; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Moves thread `tid` (0: the caller) to `cpu`.
fn move_to(tid: i32, cpu: usize) {
    // SAFETY: sched_setaffinity(2) on a thread of this process with a set made here.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// A run sees one CPU from start to end, as under the kernel (migration disabled): a per-CPU
/// value looked up, then written back after the thread was moved to another CPU, is the first
/// CPU's, and `bpf_get_smp_processor_id` does not change within the run.
#[test]
fn a_run_stays_on_one_cpu_while_its_thread_migrates() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        return println!("skipping: needs two CPUs to move a thread between");
    }
    for engine in ENGINES {
        let (rt, l) = load("percpu_migrate", engine);
        let prog = rt.program(prog_id(&l, "bump")).unwrap();
        let runs = 3;
        for run in 0..runs {
            let (from, to) = if run % 2 == 0 { (cpus[0], cpus[1]) } else { (cpus[1], cpus[0]) };
            let tid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
            let seen = tid.clone();
            let mover = std::thread::spawn(move || {
                while seen.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                std::thread::sleep(std::time::Duration::from_millis(3));
                move_to(seen.load(std::sync::atomic::Ordering::Acquire), to);
            });
            let r0 = std::thread::scope(|s| {
                s.spawn(|| {
                    move_to(0, from);
                    // SAFETY: gettid has no preconditions.
                    tid.store(unsafe { libc::gettid() }, std::sync::atomic::Ordering::Release);
                    rt.run(&prog, Context::None, 0, 0, false).unwrap()
                })
                .join()
                .unwrap()
            });
            mover.join().unwrap();
            assert_eq!(r0, 1, "{engine:?} run {run}: the CPU changed within the run");
        }
        let counter = map(&l, "counter");
        let mut v = vec![0u8; counter.syscall_value_size()];
        counter.lookup(&0u32.to_le_bytes(), &mut v).unwrap();
        let total: u64 = v.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).sum();
        assert_eq!(total, runs, "{engine:?}: every increment kept");
    }
}
