//! `Map::host_writes`: every update and delete made by a system call or a program's helper
//! call is counted, on whatever CPU it runs (the count is kept per CPU so that two CPUs writing
//! one map do not take turns at one cache line), and a copy written back is not.

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
