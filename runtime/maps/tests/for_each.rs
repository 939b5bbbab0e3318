//! `Map::for_each_elem` (what `bpf_for_each_map_elem` walks): every element once, in the
//! kernel's order for arrays, this CPU's values for per-CPU maps, addresses a program can read
//! and write through, early stops, and changes made from inside the walk.

use bpftime_maps::{current_cpu, ElemKey, Errno, Map, MapSpec, MapType, BPF_ANY};
use bpftime_shm::ShmRegion;
use std::collections::BTreeMap;
use std::sync::Arc;

fn map(t: MapType, key_size: u32, value_size: u32, max: u32) -> Map {
    let region = Arc::new(ShmRegion::anonymous(16 << 20).unwrap());
    Map::create(&region, "walked", &MapSpec::new(t, key_size, value_size, max)).unwrap()
}

fn read_u32(addr: u64) -> u32 {
    // SAFETY: for_each_elem hands over addresses of keys inside the live region.
    unsafe { (addr as *const u32).read_unaligned() }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: for_each_elem hands over addresses of values inside the live region.
    unsafe { (addr as *const u64).read_unaligned() }
}

#[test]
fn an_array_walk_goes_by_index_and_stops_when_told() {
    let m = map(MapType::Array, 4, 8, 10);
    for i in 0..10u32 {
        m.update(&i.to_le_bytes(), &(100 + i as u64).to_le_bytes(), BPF_ANY).unwrap();
    }
    let mut seen = vec![];
    let n = m
        .for_each_elem(&mut |k, v| {
            let ElemKey::Index(i) = k else { panic!("an array key is an index") };
            seen.push((i, read_u64(v)));
            i == 6
        })
        .unwrap();
    assert_eq!(n, 7, "elements seen, the one that stopped the walk included");
    assert_eq!(seen, (0..7).map(|i| (i, 100 + i as u64)).collect::<Vec<_>>());
    assert_eq!(m.for_each_elem(&mut |_, _| false).unwrap(), 10);
}

#[test]
fn a_hash_walk_sees_every_element_once_and_may_change_and_delete_them() {
    let m = map(MapType::Hash, 4, 8, 64);
    for k in 0..40u32 {
        m.update(&k.to_le_bytes(), &(k as u64 * 3).to_le_bytes(), BPF_ANY).unwrap();
    }
    let mut seen = BTreeMap::new();
    let n = m
        .for_each_elem(&mut |k, v| {
            let ElemKey::At(addr) = k else { panic!("a hash key has an address") };
            let key = read_u32(addr);
            assert!(seen.insert(key, read_u64(v)).is_none(), "key {key} seen twice");
            // SAFETY: the value's address is inside the live region, 8 bytes, writable.
            unsafe { (v as *mut u64).write_unaligned(read_u64(v) + 1) };
            if key % 2 == 1 {
                m.delete(&key.to_le_bytes()).unwrap();
            }
            false
        })
        .unwrap();
    assert_eq!(n, 40);
    assert_eq!(seen, (0..40).map(|k| (k, k as u64 * 3)).collect());
    let mut left: Vec<(u32, u64)> = m
        .keys()
        .into_iter()
        .map(|k| {
            let mut v = [0u8; 8];
            m.lookup(&k, &mut v).unwrap();
            (u32::from_le_bytes(k.try_into().unwrap()), u64::from_le_bytes(v))
        })
        .collect();
    left.sort();
    assert_eq!(left, (0..40).step_by(2).map(|k| (k, k as u64 * 3 + 1)).collect::<Vec<_>>(), "even keys, bumped once");
}

#[test]
fn per_cpu_walks_give_this_cpus_values() {
    let cpu = current_cpu();
    for t in [MapType::PercpuArray, MapType::PercpuHash, MapType::LruPercpuHash] {
        let m = map(t, 4, 8, 4);
        let ncpus = m.ncpus() as usize;
        // The syscall side writes every CPU's slot: CPU c holds 1000 * c + key.
        for k in 0..4u32 {
            let all: Vec<u8> = (0..ncpus).flat_map(|c| (1000 * c as u64 + k as u64).to_le_bytes()).collect();
            m.update(&k.to_le_bytes(), &all, BPF_ANY).unwrap();
        }
        let mut values = vec![];
        // Pinned to no CPU: the walk reads the slot of the CPU it started on, as the kernel's
        // does with migration disabled; compare with the CPU the first value names.
        m.for_each_elem(&mut |_, v| {
            values.push(read_u64(v));
            false
        })
        .unwrap();
        values.sort();
        let c = values[0] / 1000;
        assert!(c < ncpus as u64, "{t:?}: {values:?}");
        assert_eq!(values, (0..4).map(|k| 1000 * c + k).collect::<Vec<_>>(), "{t:?}: one CPU's values (this thread was on CPU {cpu})");
    }
}

#[test]
fn other_map_types_cannot_be_walked() {
    for (t, k, v) in [(MapType::Queue, 0, 8), (MapType::Ringbuf, 0, 0), (MapType::Stack, 0, 8)] {
        let max = if t == MapType::Ringbuf { 4096 } else { 4 };
        let m = map(t, k, v, max);
        assert_eq!(m.for_each_elem(&mut |_, _| false), Err(Errno::EINVAL), "{t:?}");
    }
}
