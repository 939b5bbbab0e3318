//! Every map type against the real kernel: the same sequence of operations on a kernel map
//! (raw bpf() syscalls, as root) and on ours must give the same results and errnos. Where the
//! kernel leaves an order unspecified (hash iteration, LRU eviction, trie walks) the keys are
//! compared as sets.

use bpftime_maps::{Errno, Map, MapSpec, MapType, BPF_ANY, BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST};
use bpftime_shm::{ObjectKind, ShmRegion};
use std::collections::BTreeSet;
use std::sync::Arc;

// ---- a minimal bpf() wrapper ------------------------------------------------------------------

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_DELETE_ELEM: i64 = 3;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_PROG_LOAD: i64 = 5;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: i64 = 21;

fn sys_bpf(cmd: i64, attr: &mut [u8; 128]) -> Result<i64, Errno> {
    // SAFETY: bpf(2) with a zero-initialised attribute buffer of 128 bytes, larger than every
    // command's attributes; the kernel reads and writes only within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)))
    } else {
        Ok(r)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

struct KernelMap {
    fd: i32,
}

impl Drop for KernelMap {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

fn kernel_create(spec: &MapSpec, inner_fd: i32) -> Result<KernelMap, Errno> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, spec.map_type as u32);
    put32(&mut a, 4, spec.key_size);
    put32(&mut a, 8, spec.value_size);
    put32(&mut a, 12, spec.max_entries);
    put32(&mut a, 16, spec.flags);
    put32(&mut a, 20, inner_fd as u32);
    put64(&mut a, 64, spec.map_extra);
    sys_bpf(BPF_MAP_CREATE, &mut a).map(|fd| KernelMap { fd: fd as i32 })
}

/// Loads `r0 = 0; exit` as a socket filter, for PROG_ARRAY tests.
fn kernel_trivial_prog() -> i32 {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut a = [0u8; 128];
    put32(&mut a, 0, 1); // BPF_PROG_TYPE_SOCKET_FILTER
    put32(&mut a, 4, 2);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    sys_bpf(BPF_PROG_LOAD, &mut a).expect("load a trivial program") as i32
}

// ---- the two backends --------------------------------------------------------------------------

/// One result of an operation: Ok with the bytes it produced, or an errno.
type Outcome = Result<Vec<u8>, Errno>;

trait Backend {
    fn lookup(&self, key: &[u8], value_size: usize) -> Outcome;
    fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Outcome;
    fn delete(&self, key: &[u8]) -> Outcome;
    fn next_key(&self, key: Option<&[u8]>, key_size: usize) -> Outcome;
    fn lookup_and_delete(&self, key: &[u8], value_size: usize) -> Outcome;
}

fn ptr_or_null(b: &[u8]) -> u64 {
    if b.is_empty() {
        0
    } else {
        b.as_ptr() as u64
    }
}

impl Backend for KernelMap {
    fn lookup(&self, key: &[u8], value_size: usize) -> Outcome {
        let mut value = vec![0u8; value_size];
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.fd as u32);
        put64(&mut a, 8, ptr_or_null(key));
        put64(&mut a, 16, value.as_mut_ptr() as u64);
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a).map(|_| value)
    }
    fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Outcome {
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.fd as u32);
        put64(&mut a, 8, ptr_or_null(key));
        put64(&mut a, 16, ptr_or_null(value));
        put64(&mut a, 24, flags);
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| vec![])
    }
    fn delete(&self, key: &[u8]) -> Outcome {
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.fd as u32);
        put64(&mut a, 8, ptr_or_null(key));
        sys_bpf(BPF_MAP_DELETE_ELEM, &mut a).map(|_| vec![])
    }
    fn next_key(&self, key: Option<&[u8]>, key_size: usize) -> Outcome {
        let mut next = vec![0u8; key_size];
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.fd as u32);
        put64(&mut a, 8, key.map(ptr_or_null).unwrap_or(0));
        put64(&mut a, 16, next.as_mut_ptr() as u64);
        sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a).map(|_| next)
    }
    fn lookup_and_delete(&self, key: &[u8], value_size: usize) -> Outcome {
        let mut value = vec![0u8; value_size];
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.fd as u32);
        put64(&mut a, 8, ptr_or_null(key));
        put64(&mut a, 16, value.as_mut_ptr() as u64);
        sys_bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut a).map(|_| value)
    }
}

impl Backend for Map {
    fn lookup(&self, key: &[u8], value_size: usize) -> Outcome {
        let mut value = vec![0u8; value_size];
        Map::lookup(self, key, &mut value).map(|_| value)
    }
    fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Outcome {
        Map::update(self, key, value, flags).map(|_| vec![])
    }
    fn delete(&self, key: &[u8]) -> Outcome {
        Map::delete(self, key).map(|_| vec![])
    }
    fn next_key(&self, key: Option<&[u8]>, key_size: usize) -> Outcome {
        let mut next = vec![0u8; key_size];
        Map::next_key(self, key, &mut next).map(|_| next)
    }
    fn lookup_and_delete(&self, key: &[u8], value_size: usize) -> Outcome {
        let mut value = vec![0u8; value_size];
        Map::lookup_and_delete(self, key, &mut value).map(|_| value)
    }
}

// ---- scripts -------------------------------------------------------------------------------

/// An operation of a script.
#[derive(Clone, Debug)]
enum Op {
    Lookup(Vec<u8>),
    /// Compare only whether it succeeded (the value is an id that differs between the two).
    LookupOk(Vec<u8>),
    Update(Vec<u8>, Vec<u8>, u64),
    Delete(Vec<u8>),
    NextKey(Option<Vec<u8>>),
    LookupAndDelete(Vec<u8>),
    /// Iterate all keys with get_next_key and compare as sets.
    KeySet,
}

fn k32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn v64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn all_keys(b: &dyn Backend, key_size: usize, limit: usize) -> Outcome {
    let mut set = BTreeSet::new();
    let mut cur: Option<Vec<u8>> = None;
    for _ in 0..limit {
        match b.next_key(cur.as_deref(), key_size) {
            Ok(k) => {
                set.insert(k.clone());
                cur = Some(k);
            }
            Err(Errno::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(set.into_iter().flatten().collect())
}

fn run(b: &dyn Backend, spec: &MapSpec, value_size: usize, ops: &[Op]) -> Vec<(String, Outcome)> {
    let ks = spec.key_size as usize;
    ops.iter()
        .map(|op| {
            let r = match op {
                Op::Lookup(k) => b.lookup(k, value_size),
                Op::LookupOk(k) => b.lookup(k, value_size).map(|_| vec![]),
                Op::Update(k, v, f) => b.update(k, v, *f),
                Op::Delete(k) => b.delete(k),
                Op::NextKey(k) => b.next_key(k.as_deref(), ks),
                Op::LookupAndDelete(k) => b.lookup_and_delete(k, value_size),
                Op::KeySet => all_keys(b, ks, spec.max_entries as usize + 2),
            };
            (format!("{op:?}"), r)
        })
        .collect()
}

fn have_bpf() -> bool {
    let ok = kernel_create(&MapSpec::new(MapType::Array, 4, 4, 1), 0).is_ok();
    if !ok {
        println!("skip: bpf() is not available (needs root and a kernel with BPF)");
    }
    ok
}

fn region() -> Arc<ShmRegion> {
    Arc::new(ShmRegion::anonymous(16 << 20).unwrap())
}

/// Runs `ops` on both and asserts equal outcomes.
fn compare(name: &str, spec: &MapSpec, ops: &[Op]) {
    if !have_bpf() {
        return;
    }
    let kernel = kernel_create(spec, 0).unwrap_or_else(|e| panic!("{name}: kernel refused {spec:?}: {e}"));
    let ours = Map::create(&region(), name, spec).unwrap();
    compare_with(name, spec, &kernel, &ours, ops);
}

fn compare_with(name: &str, spec: &MapSpec, kernel: &dyn Backend, ours: &Map, ops: &[Op]) {
    let vs = ours.syscall_value_size();
    let want = run(kernel, spec, vs, ops);
    let got = run(ours, spec, vs, ops);
    let mut diffs = vec![];
    for (i, ((op, w), (_, g))) in want.iter().zip(&got).enumerate() {
        if w != g {
            diffs.push(format!("  #{i} {op}: kernel {w:?}, ours {g:?}"));
        }
    }
    assert!(diffs.is_empty(), "{name}: {} of {} operations differ:\n{}", diffs.len(), ops.len(), diffs.join("\n"));
}

fn common_bad_flags(key: Vec<u8>, value: Vec<u8>) -> Vec<Op> {
    vec![Op::Update(key.clone(), value.clone(), 3), Op::Update(key.clone(), value.clone(), 4), Op::Update(key, value, 1 << 10)]
}

#[test]
fn array_matches_kernel() {
    let spec = MapSpec::new(MapType::Array, 4, 8, 4);
    let mut ops = vec![
        Op::Lookup(k32(0)),
        Op::Update(k32(1), v64(11), BPF_ANY),
        Op::Update(k32(2), v64(22), BPF_NOEXIST),
        Op::Update(k32(3), v64(33), BPF_EXIST),
        Op::Update(k32(4), v64(44), BPF_ANY),
        Op::Delete(k32(1)),
        Op::Lookup(k32(1)),
        Op::Lookup(k32(3)),
        Op::Lookup(k32(9)),
        Op::NextKey(None),
        Op::NextKey(Some(k32(0))),
        Op::NextKey(Some(k32(2))),
        Op::NextKey(Some(k32(3))),
        Op::NextKey(Some(k32(100))),
    ];
    ops.extend(common_bad_flags(k32(0), v64(1)));
    compare("array", &spec, &ops);
}

#[test]
fn percpu_array_matches_kernel() {
    let spec = MapSpec::new(MapType::PercpuArray, 4, 12, 3);
    let ncpus = bpftime_maps::possible_cpus() as usize;
    let value: Vec<u8> = (0..ncpus * 16).map(|i| (i % 16 < 12) as u8 * i as u8).collect();
    let ops = vec![
        Op::Lookup(k32(0)),
        Op::Update(k32(1), value.clone(), BPF_ANY),
        Op::Lookup(k32(1)),
        Op::Update(k32(1), value.clone(), BPF_NOEXIST),
        Op::Update(k32(3), value, BPF_ANY),
        Op::Delete(k32(0)),
        Op::NextKey(Some(k32(1))),
    ];
    compare("percpu_array", &spec, &ops);
}

fn hash_ops() -> Vec<Op> {
    let mut ops = vec![
        Op::Lookup(k32(1)),
        Op::NextKey(None),
        Op::Update(k32(1), v64(10), BPF_NOEXIST),
        Op::Update(k32(1), v64(11), BPF_NOEXIST),
        Op::Update(k32(2), v64(20), BPF_EXIST),
        Op::Update(k32(2), v64(21), BPF_ANY),
        Op::Update(k32(3), v64(30), BPF_ANY),
        Op::Update(k32(4), v64(40), BPF_ANY),
        Op::Update(k32(1), v64(12), BPF_EXIST),
        Op::Update(k32(3), v64(31), BPF_ANY),
        Op::Lookup(k32(1)),
        Op::Lookup(k32(3)),
        Op::KeySet,
        Op::Delete(k32(2)),
        Op::Delete(k32(2)),
        Op::NextKey(Some(k32(99))).clone(),
        Op::LookupAndDelete(k32(1)),
        Op::LookupAndDelete(k32(1)),
        Op::Update(k32(5), v64(50), BPF_ANY),
        Op::Update(k32(6), v64(60), BPF_ANY),
        Op::KeySet,
    ];
    ops.extend(common_bad_flags(k32(7), v64(1)));
    ops
}

#[test]
fn hash_matches_kernel() {
    // The first key of an iteration depends on the hash function, so compare sets, and check
    // `next_key` of a missing key only for "some key" on both sides.
    let spec = MapSpec::new(MapType::Hash, 4, 8, 3);
    let ops: Vec<Op> = hash_ops().into_iter().filter(|o| !matches!(o, Op::NextKey(Some(_)))).collect();
    compare("hash", &spec, &ops);
}

#[test]
fn hash_with_long_keys_matches_kernel() {
    let spec = MapSpec::new(MapType::Hash, 64, 16, 8);
    let key = |i: u8| vec![i; 64];
    let ops = vec![
        Op::Update(key(1), vec![1; 16], BPF_ANY),
        Op::Update(key(2), vec![2; 16], BPF_NOEXIST),
        Op::Lookup(key(1)),
        Op::Lookup(key(3)),
        Op::Delete(key(1)),
        Op::KeySet,
    ];
    compare("hash64", &spec, &ops);
}

#[test]
fn percpu_hash_matches_kernel() {
    let spec = MapSpec::new(MapType::PercpuHash, 4, 8, 2);
    let ncpus = bpftime_maps::possible_cpus() as usize;
    let value: Vec<u8> = (0..ncpus * 8).map(|i| i as u8).collect();
    let ops = vec![
        Op::Update(k32(1), value.clone(), BPF_ANY),
        Op::Lookup(k32(1)),
        Op::Update(k32(2), value.clone(), BPF_NOEXIST),
        Op::Update(k32(3), value.clone(), BPF_ANY),
        Op::Update(k32(1), value, BPF_EXIST),
        Op::Delete(k32(2)),
        Op::KeySet,
    ];
    compare("percpu_hash", &spec, &ops);
}

#[test]
fn lru_hash_never_refuses_and_stays_bounded() {
    if !have_bpf() {
        return;
    }
    for map_type in [MapType::LruHash, MapType::LruPercpuHash] {
        let spec = MapSpec::new(map_type, 4, 8, 16);
        let kernel = kernel_create(&spec, 0).unwrap();
        let ours = Map::create(&region(), "lru", &spec).unwrap();
        let vs = ours.syscall_value_size();
        // Inserting twice the capacity always succeeds (eviction, not E2BIG)...
        let ops: Vec<Op> = (0..32).map(|i| Op::Update(k32(i), vec![i as u8; vs], BPF_ANY)).collect();
        compare_with("lru inserts", &spec, &kernel, &ours, &ops);
        // ...and the map keeps at most max_entries of the inserted keys (which ones is the
        // implementation's choice on both sides).
        for (who, b) in [("kernel", &kernel as &dyn Backend), ("ours", &ours)] {
            let keys = all_keys(b, 4, 100).unwrap();
            let n = keys.len() / 4;
            assert!(n > 0 && n <= 16, "{who} {map_type:?} holds {n} keys");
            for k in keys.chunks(4) {
                assert!(u32::from_le_bytes(k.try_into().unwrap()) < 32);
            }
        }
        // The most recent key survives on both.
        compare_with("lru recent", &spec, &kernel, &ours, &[Op::Lookup(k32(31))]);
    }
}

#[test]
fn queue_and_stack_match_kernel() {
    for map_type in [MapType::Queue, MapType::Stack] {
        let spec = MapSpec::new(map_type, 0, 8, 3);
        let ops = vec![
            Op::Lookup(vec![]),
            Op::LookupAndDelete(vec![]),
            Op::Update(vec![], v64(1), BPF_ANY),
            Op::Update(vec![], v64(2), BPF_ANY),
            Op::Update(vec![], v64(3), BPF_ANY),
            Op::Update(vec![], v64(4), BPF_ANY),
            Op::Update(vec![], v64(5), BPF_EXIST),
            Op::Update(vec![], v64(6), BPF_NOEXIST),
            Op::Lookup(vec![]),
            Op::LookupAndDelete(vec![]),
            Op::LookupAndDelete(vec![]),
            Op::Delete(vec![]),
            Op::NextKey(None),
            Op::LookupAndDelete(vec![]),
            Op::LookupAndDelete(vec![]),
        ];
        compare(map_type.name(), &spec, &ops);
    }
}

#[test]
fn bloom_filter_matches_kernel() {
    let mut spec = MapSpec::new(MapType::BloomFilter, 0, 8, 100);
    spec.map_extra = 3;
    let mut ops: Vec<Op> = (0..20u64).map(|i| Op::Update(vec![], v64(i * 7919), BPF_ANY)).collect();
    // No false negatives: every pushed value is found.
    ops.extend((0..20u64).map(|i| Op::Lookup(v64(i * 7919)).clone()));
    ops.extend([Op::Update(vec![], v64(1), BPF_NOEXIST), Op::Delete(vec![]), Op::NextKey(None)]);
    // Lookups return no bytes for a bloom filter: compare them as success/failure.
    let ops: Vec<Op> = ops.into_iter().map(|o| if let Op::Lookup(v) = o { Op::LookupOk(v) } else { o }).collect();
    // A bloom filter's lookup passes the value in the value pointer; our Backend passes it as
    // `key`, so run the peeks directly.
    if !have_bpf() {
        return;
    }
    let kernel = kernel_create(&spec, 0).unwrap();
    let ours = Map::create(&region(), "bloom", &spec).unwrap();
    for op in &ops {
        let (w, g) = match op {
            Op::LookupOk(v) => {
                let mut a = [0u8; 128];
                put32(&mut a, 0, kernel.fd as u32);
                put64(&mut a, 16, v.as_ptr() as u64);
                let w = sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a).map(|_| vec![]);
                let mut buf = v.clone();
                (w, Map::lookup(&ours, &[], &mut buf).map(|_| vec![]))
            }
            other => (run(&kernel, &spec, 8, std::slice::from_ref(other)).remove(0).1, run(&ours, &spec, 8, std::slice::from_ref(other)).remove(0).1),
        };
        assert_eq!(w, g, "bloom {op:?}");
    }
}

fn lpm_key(prefixlen: u32, ip: [u8; 4]) -> Vec<u8> {
    let mut k = prefixlen.to_le_bytes().to_vec();
    k.extend_from_slice(&ip);
    k
}

#[test]
fn lpm_trie_matches_kernel() {
    let mut spec = MapSpec::new(MapType::LpmTrie, 8, 8, 4);
    if have_bpf() {
        // Without BPF_F_NO_PREALLOC both refuse the map.
        let r = kernel_create(&spec, 0).map(|_| ());
        assert_eq!(r, Err(Errno::EINVAL));
        assert!(Map::create(&region(), "lpm", &spec).is_err());
    }
    spec.flags = BPF_F_NO_PREALLOC;
    let ops = vec![
        Op::Update(lpm_key(8, [10, 0, 0, 0]), v64(8), BPF_ANY),
        Op::Update(lpm_key(16, [10, 1, 0, 0]), v64(16), BPF_NOEXIST),
        Op::Update(lpm_key(16, [10, 1, 0, 0]), v64(17), BPF_NOEXIST),
        Op::Update(lpm_key(24, [10, 1, 2, 0]), v64(24), BPF_EXIST),
        Op::Lookup(lpm_key(32, [10, 1, 2, 3])),
        Op::Lookup(lpm_key(32, [10, 2, 0, 1])),
        Op::Lookup(lpm_key(32, [11, 0, 0, 0])),
        Op::Lookup(lpm_key(12, [10, 1, 0, 0])),
        Op::Update(lpm_key(33, [10, 0, 0, 0]), v64(0), BPF_ANY),
        Op::Update(lpm_key(0, [0, 0, 0, 0]), v64(0), BPF_ANY),
        Op::Update(lpm_key(32, [1, 2, 3, 4]), v64(32), BPF_ANY),
        Op::Update(lpm_key(32, [1, 2, 3, 5]), v64(32), BPF_ANY),
        Op::KeySet,
        Op::Delete(lpm_key(24, [10, 1, 2, 0])),
        Op::Delete(lpm_key(16, [10, 1, 0, 0])),
        Op::Lookup(lpm_key(32, [10, 1, 2, 3])),
        Op::Lookup(lpm_key(32, [99, 1, 2, 3])),
        Op::KeySet,
    ];
    compare("lpm", &spec, &ops);
}

#[test]
fn ringbuf_syscall_side_matches_kernel() {
    let spec = MapSpec::new(MapType::Ringbuf, 0, 0, 4096);
    let ops = vec![Op::Lookup(vec![]), Op::Update(vec![], vec![], BPF_ANY), Op::Delete(vec![]), Op::NextKey(None)];
    compare("ringbuf", &spec, &ops);
}

#[test]
fn stack_trace_matches_kernel() {
    let spec = MapSpec::new(MapType::StackTrace, 4, 8 * 16, 8);
    let ops = vec![Op::Lookup(k32(0)), Op::Update(k32(0), vec![0; 128], BPF_ANY), Op::Delete(k32(1)), Op::NextKey(None), Op::NextKey(Some(k32(3)))];
    compare("stack_trace", &spec, &ops);
}

#[test]
fn perf_event_array_matches_kernel() {
    let spec = MapSpec::new(MapType::PerfEventArray, 4, 4, 2);
    let ops = vec![Op::Lookup(k32(0)), Op::Delete(k32(0)), Op::Delete(k32(5)), Op::NextKey(None), Op::NextKey(Some(k32(1)))];
    compare("perf_event_array", &spec, &ops);
}

#[test]
fn prog_array_matches_kernel() {
    if !have_bpf() {
        return;
    }
    let spec = MapSpec::new(MapType::ProgArray, 4, 4, 4);
    let kernel = kernel_create(&spec, 0).unwrap();
    let kprog = kernel_trivial_prog();
    let r = region();
    let ours = Map::create(&r, "progs", &spec).unwrap();
    let oprog = r.add_object(ObjectKind::Program, "p", 4096).unwrap();
    // The value is a program reference: the kernel's fd, our object id.
    let step = |op: &str, kv: Option<(u32, u32, u64)>, f: &dyn Fn(&dyn Backend, Option<Vec<u8>>) -> Outcome| {
        let (kval, oval) = match kv {
            Some((k, o, _)) => (Some(k32(k)), Some(k32(o))),
            None => (None, None),
        };
        let w = f(&kernel, kval);
        let g = f(&ours, oval);
        assert_eq!(w.map(|_| ()), g.map(|_| ()), "prog_array {op}");
    };
    let upd = |idx: u32, flags: u64| move |b: &dyn Backend, v: Option<Vec<u8>>| b.update(&k32(idx), &v.unwrap(), flags);
    step("update 0", Some((kprog as u32, oprog, 0)), &upd(0, BPF_ANY));
    step("update 1 NOEXIST", Some((kprog as u32, oprog, 0)), &upd(1, BPF_NOEXIST));
    step("update 9", Some((kprog as u32, oprog, 0)), &upd(9, BPF_ANY));
    step("update bad ref", Some((9999, 9999, 0)), &upd(2, BPF_ANY));
    step("lookup 0", None, &|b, _| b.lookup(&k32(0), 4));
    step("lookup 1", None, &|b, _| b.lookup(&k32(1), 4));
    step("delete 0", None, &|b, _| b.delete(&k32(0)));
    step("delete 0 again", None, &|b, _| b.delete(&k32(0)));
    step("delete 9", None, &|b, _| b.delete(&k32(9)));
    step("next after 3", None, &|b, _| b.next_key(Some(&k32(3)), 4));
    // SAFETY: closing the program fd we loaded.
    unsafe { libc::close(kprog) };
}

#[test]
fn map_in_map_matches_kernel() {
    if !have_bpf() {
        return;
    }
    let inner_spec = MapSpec::new(MapType::Array, 4, 8, 4);
    let other_spec = MapSpec::new(MapType::Array, 4, 16, 4);
    let r = region();
    let k_inner = kernel_create(&inner_spec, 0).unwrap();
    let k_other = kernel_create(&other_spec, 0).unwrap();
    let o_inner = Map::create(&r, "inner", &inner_spec).unwrap();
    let o_other = Map::create(&r, "other", &other_spec).unwrap();
    for outer_type in [MapType::ArrayOfMaps, MapType::HashOfMaps] {
        let mut spec = MapSpec::new(outer_type, 4, 4, 4);
        let kernel = kernel_create(&spec, k_inner.fd).unwrap();
        spec.inner_map_id = o_inner.id();
        let ours = Map::create(&r, "outer", &spec).unwrap();
        let cases: Vec<(&str, Box<dyn Fn(&dyn Backend, u32, u32) -> Outcome>)> = vec![
            ("update 1 inner", Box::new(|b, inner, _| b.update(&k32(1), &k32(inner), BPF_ANY))),
            ("update 2 wrong shape", Box::new(|b, _, other| b.update(&k32(2), &k32(other), BPF_ANY))),
            ("update 3 bad ref", Box::new(|b, _, _| b.update(&k32(3), &k32(4242), BPF_ANY))),
            ("lookup 1", Box::new(|b, _, _| b.lookup(&k32(1), 4).map(|_| vec![]))),
            ("lookup 2", Box::new(|b, _, _| b.lookup(&k32(2), 4).map(|_| vec![]))),
            ("delete 1", Box::new(|b, _, _| b.delete(&k32(1)))),
            ("delete 1 again", Box::new(|b, _, _| b.delete(&k32(1)))),
        ];
        for (name, f) in &cases {
            let w = f(&kernel, k_inner.fd as u32, k_other.fd as u32);
            let g = f(&ours, o_inner.id(), o_other.id());
            assert_eq!(w, g, "{outer_type:?} {name}");
        }
    }
}

#[test]
fn creation_errors_match_kernel() {
    if !have_bpf() {
        return;
    }
    let bad = [
        MapSpec::new(MapType::Array, 8, 8, 4),
        MapSpec::new(MapType::Array, 4, 0, 4),
        MapSpec::new(MapType::Hash, 4, 8, 0),
        MapSpec::new(MapType::Queue, 4, 8, 4),
        MapSpec::new(MapType::Ringbuf, 0, 0, 1000),
        MapSpec::new(MapType::ProgArray, 4, 8, 4),
    ];
    for spec in bad {
        let k = kernel_create(&spec, 0).map(|_| ());
        let o = Map::create(&region(), "bad", &spec).map(|_| ());
        assert_eq!(k.is_err(), o.is_err(), "{spec:?}: kernel {k:?}, ours {o:?}");
    }
}

// ---- batch walks ---------------------------------------------------------------------------

const BPF_MAP_LOOKUP_BATCH: i64 = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: i64 = 25;

/// One batch call's result: the errno (0 for success), the (key, value) pairs copied.
type Batch = (i32, Vec<(Vec<u8>, Vec<u8>)>);

/// Walks a kernel map with `BPF_MAP_LOOKUP(_AND_DELETE)_BATCH`, `room` entries per call.
fn kernel_batches(map: &KernelMap, ks: usize, vs: usize, room: u32, delete: bool) -> Vec<Batch> {
    let mut out = vec![];
    let (mut token, mut next) = ([0u8; 8], [0u8; 8]);
    for call in 0..1000 {
        let (mut keys, mut values) = (vec![0u8; ks * room as usize], vec![0u8; vs * room as usize]);
        let mut a = [0u8; 128];
        put64(&mut a, 0, if call == 0 { 0 } else { token.as_mut_ptr() as u64 });
        put64(&mut a, 8, next.as_mut_ptr() as u64);
        put64(&mut a, 16, keys.as_mut_ptr() as u64);
        put64(&mut a, 24, values.as_mut_ptr() as u64);
        put32(&mut a, 32, room);
        put32(&mut a, 36, map.fd as u32);
        let r = sys_bpf(if delete { BPF_MAP_LOOKUP_AND_DELETE_BATCH } else { BPF_MAP_LOOKUP_BATCH }, &mut a);
        // `count` is written back on success and at the end (ENOENT) only.
        let n = if matches!(r, Ok(_) | Err(Errno::ENOENT)) { u32::from_le_bytes(a[32..36].try_into().unwrap()) as usize } else { 0 };
        let pairs = (0..n).map(|i| (keys[i * ks..(i + 1) * ks].to_vec(), values[i * vs..(i + 1) * vs].to_vec())).collect();
        out.push((r.err().map_or(0, |e| e.0), pairs));
        if r.is_err() {
            return out;
        }
        token = next;
    }
    panic!("the kernel's batch walk did not end");
}

/// The same walk over ours, as the syscall server does it: `Map::batch_keys`, then each
/// key's value.
fn our_batches(map: &Map, room: u32, delete: bool) -> Vec<Batch> {
    let mut out = vec![];
    let mut cursor = 0;
    for _ in 0..1000 {
        let (keys, next) = match map.batch_keys(cursor, room as usize) {
            Ok(walk) => walk,
            Err(e) => {
                out.push((e.0, vec![]));
                return out;
            }
        };
        let mut pairs = vec![];
        for key in keys {
            let mut value = vec![0u8; map.syscall_value_size()];
            let found = if delete { map.lookup_and_delete(&key, &mut value) } else { map.lookup(&key, &mut value) };
            if found.is_ok() {
                pairs.push((key, value));
            }
        }
        match next {
            Some(n) => {
                out.push((0, pairs));
                cursor = n;
            }
            None => {
                out.push((libc::ENOENT, pairs));
                return out;
            }
        }
    }
    panic!("our batch walk did not end");
}

/// Batch walks of hash maps return what the kernel's return: the same entries with ENOENT at
/// the end and no call over `room` (bucket boundaries differ), `lookup_and_delete` empties
/// the map. (Arrays and other maps walked by key: the syscall server's, compared with the
/// kernel by `map_commands_answer_what_the_kernel_answers`.)
#[test]
fn batch_walks_match_kernel() {
    if !have_bpf() {
        return;
    }
    for t in [MapType::Hash, MapType::PercpuHash] {
        let spec = MapSpec::new(t, 4, 8, 64);
        let kernel = kernel_create(&spec, 0).unwrap();
        let ours = Map::create(&region(), "batch_hash", &spec).unwrap();
        let vs = ours.syscall_value_size();
        for i in 0..50u32 {
            let v: Vec<u8> = (0..vs / 8).flat_map(|c| (i as u64 * 7 + c as u64).to_le_bytes()).collect();
            kernel.update(&k32(i * 13), &v, BPF_ANY).unwrap();
            ours.update(&k32(i * 13), &v, BPF_ANY).unwrap();
        }
        for delete in [false, true] {
            let (k, o) = (kernel_batches(&kernel, 4, vs, 8, delete), our_batches(&ours, 8, delete));
            for walk in [&k, &o] {
                assert_eq!(walk.last().unwrap().0, libc::ENOENT, "{t:?}: the walk ends with ENOENT");
                assert!(walk[..walk.len() - 1].iter().all(|(e, p)| *e == 0 && p.len() <= 8), "{t:?}: {walk:?}");
            }
            let set = |w: &[Batch]| w.iter().flat_map(|(_, p)| p.clone()).collect::<BTreeSet<_>>();
            assert_eq!(set(&o), set(&k), "{t:?} delete {delete}");
            assert_eq!(set(&o).len(), 50);
        }
        assert_eq!(ours.len(), 0, "lookup_and_delete batches empty the map");
        assert_eq!(our_batches(&ours, 8, false), kernel_batches(&kernel, 4, vs, 8, false), "an empty map");
    }
    // No batch operations on other map types, as in the kernel (ENOTSUPP).
    let spec = MapSpec::new(MapType::Queue, 0, 8, 4);
    let ours = Map::create(&region(), "batch_queue", &spec).unwrap();
    let kernel = kernel_create(&spec, 0).unwrap();
    assert_eq!(our_batches(&ours, 4, false), kernel_batches(&kernel, 0, 8, 4, false));
}
