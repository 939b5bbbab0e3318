//! Maps written from several CPUs at once: nothing two CPUs write on their own lies on one cache
//! line (they would take turns at it). `Map::host_writes` counts every update and delete made
//! by a system call or a program's helper call, on whatever CPU it runs (per CPU), and not a
//! copy written back; each CPU's values of a per-CPU map lie on lines of their own.

use bpftime_maps::{Map, MapSpec, MapType, BPF_ANY};
use bpftime_shm::ShmRegion;
use std::sync::Arc;

fn map(t: MapType, max: u32) -> Map {
    let region = Arc::new(ShmRegion::anonymous(16 << 20).unwrap());
    Map::create(&region, "written", &MapSpec::new(t, 4, 8, max)).unwrap()
}

#[test]
fn each_kind_of_write_is_counted_once_and_copies_written_back_are_not() {
    for t in [MapType::Hash, MapType::PercpuHash, MapType::LruHash, MapType::Array, MapType::PercpuArray] {
        let m = map(t, 16);
        let start = m.host_writes();
        let value = vec![7u8; m.syscall_value_size()];
        m.update(&1u32.to_le_bytes(), &value, BPF_ANY).unwrap();
        assert_eq!(m.host_writes(), start + 1, "{t:?}: a system call's update");
        m.update_from_prog(&2u32.to_le_bytes(), &9u64.to_le_bytes(), BPF_ANY).unwrap();
        assert_eq!(m.host_writes(), start + 2, "{t:?}: a program's update");
        m.update_from_copy(&3u32.to_le_bytes(), &value, BPF_ANY).unwrap();
        assert_eq!(m.host_writes(), start + 2, "{t:?}: a copy written back is not counted");
        if !matches!(t, MapType::Array | MapType::PercpuArray) {
            m.delete(&1u32.to_le_bytes()).unwrap();
            assert_eq!(m.host_writes(), start + 3, "{t:?}: a delete");
        }
    }
}

#[test]
fn writes_from_threads_on_every_cpu_all_count() {
    let m = Arc::new(map(MapType::Hash, 1024));
    let start = m.host_writes();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    const PER_THREAD: u32 = 20_000;
    std::thread::scope(|s| {
        for t in 0..cpus as u32 * 2 {
            let m = &m;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let key = t * 32 + i % 32;
                    m.update_from_prog(&key.to_le_bytes(), &u64::from(i).to_le_bytes(), BPF_ANY).unwrap();
                }
            });
        }
    });
    assert_eq!(m.host_writes() - start, u64::from(PER_THREAD) * cpus as u64 * 2);
}

/// Each CPU's values of a per-CPU map lie in cache lines of their own: two CPUs counting into
/// the same key never take turns at one line. What a program writes through CPU `c`'s pointer
/// is what the system call side reads as CPU `c`'s value.
#[test]
fn per_cpu_values_of_one_key_lie_on_lines_of_their_own() {
    let ncpus = bpftime_maps::possible_cpus();
    for t in [MapType::PercpuArray, MapType::PercpuHash, MapType::LruPercpuHash] {
        for max in [1u32, 3, 64] {
            let m = map(t, max);
            let keys: Vec<u32> = (0..max).collect();
            if t != MapType::PercpuArray {
                for &k in &keys {
                    m.update(&k.to_le_bytes(), &vec![0u8; m.syscall_value_size()], BPF_ANY).unwrap();
                }
            }
            let mut lines = std::collections::HashMap::new();
            for &k in &keys {
                for cpu in 0..ncpus {
                    let p = m.lookup_ptr_on_cpu(&k.to_le_bytes(), cpu).unwrap() as u64;
                    if let Some(other) = lines.insert(p / 64, cpu) {
                        assert_eq!(other, cpu, "{t:?}, {max} entries: CPUs {other} and {cpu} share line {:#x}", p / 64 * 64);
                    }
                    // SAFETY: a live 8-byte value of the map, in the region.
                    unsafe { (p as *mut u64).write_unaligned(u64::from(k) * 1000 + u64::from(cpu)) };
                }
            }
            for &k in &keys {
                let mut all = vec![0u8; m.syscall_value_size()];
                m.lookup(&k.to_le_bytes(), &mut all).unwrap();
                let got: Vec<u64> = all.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
                let want: Vec<u64> = (0..ncpus).map(|cpu| u64::from(k) * 1000 + u64::from(cpu)).collect();
                assert_eq!(got, want, "{t:?}, {max} entries, key {k}");
            }
        }
    }
}

/// Keeps this thread on CPU `cpu` (where the machine has it).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it for cpu < 1024;
    // sched_setaffinity(2) reads the set (pid 0: this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % 1024, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a thread that stays on CPU `cpu`.
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(cpu);
            f()
        })
        .join()
        .unwrap()
    })
}

/// A hash map's `max_entries` holds exactly, however inserts and deletes are spread over CPUs
/// (each CPU keeps a share of the budget): what one CPU freed another can use, and a full map
/// refuses the next key with E2BIG, as the kernel's does.
#[test]
fn a_hash_maps_size_limit_is_exact_across_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in [MapType::Hash, MapType::PercpuHash] {
        let m = map(t, 100);
        let value = vec![1u8; m.syscall_value_size()];
        let insert = |k: u32| m.update(&k.to_le_bytes(), &value, BPF_ANY);
        // CPU 0 adds 60 keys and deletes them: the budget they took stays with it.
        on_cpu(0, || {
            for k in 0..60 {
                insert(k).unwrap();
            }
            for k in 0..60u32 {
                m.delete(&k.to_le_bytes()).unwrap();
            }
        });
        assert_eq!(m.len(), 0, "{t:?}");
        // Another CPU fills the map: all 100 entries, then no more.
        let added = on_cpu(1 % cpus, || (1000..1200).take_while(|&k| insert(k).is_ok()).count());
        assert_eq!(added, 100, "{t:?}");
        assert_eq!(m.len(), 100, "{t:?}");
        assert_eq!(insert(5000), Err(bpftime_maps::Errno::E2BIG), "{t:?}");
        // Replacing a key of a full map needs no new entry.
        insert(1000).unwrap();
        // One deleted on CPU 0 makes room for one key, on any CPU.
        on_cpu(0, || m.delete(&1001u32.to_le_bytes()).unwrap());
        on_cpu(1 % cpus, || {
            insert(6000).unwrap();
            assert_eq!(insert(6001), Err(bpftime_maps::Errno::E2BIG), "{t:?}");
        });
        assert_eq!(m.len(), 100, "{t:?}");
    }
}

/// Threads adding keys of their own on one CPU and deleting them on another, never holding
/// more than the map takes between them, never see E2BIG: what one CPU's deletes gave back is
/// found by the next CPU's inserts, and no part of the budget is in transit where an insert
/// would miss it.
#[test]
fn a_hash_map_that_is_not_full_takes_every_key() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (max, window) in [(1000u32, 200u32), (16, 4)] {
        let m = map(MapType::Hash, max);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        if i % window == 0 {
                            // Each phase (adding, then deleting) on the next CPU.
                            pin_to((t + i / window) as usize % cpus);
                        }
                        let key = (t * window + i % window).to_le_bytes();
                        if i / window % 2 == 0 {
                            m.update(&key, &1u64.to_le_bytes(), BPF_ANY).unwrap_or_else(|e| panic!("max {max}: insert {i} of thread {t}: {e:?}"));
                        } else {
                            m.delete(&key).unwrap();
                        }
                    }
                });
            }
        });
    }
}
