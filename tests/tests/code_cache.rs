//! The code cache on clang-built objects: what one runtime compiles at load, another maps and
//! runs identically without verifying or compiling; entries made for other inputs, tampered
//! with, or writable by others are never used.

use bpftime_jit::cache::Outcome;
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::{build_example, example_names};
use bpftime_vm::exec::Context;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn cache_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bpftime-code-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn runtime(region: &Arc<ShmRegion>, dir: &Path) -> Runtime {
    let mut rt = Runtime::new(region.clone(), EngineKind::Jit);
    rt.set_code_cache(dir).expect("cache opens");
    rt
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Runs `prog` of `rt` on a context of zeros and of a pattern: r0 or the error, as text.
fn outputs(rt: &Runtime, id: u32) -> Vec<String> {
    let prog = rt.program(id).unwrap();
    [[0u8; 256], std::array::from_fn(|i| (i * 7) as u8)].into_iter().map(|mut ctx| format!("{:?}", rt.run(&prog, Context::Mem(&mut ctx), 0, 0, true))).collect()
}

#[test]
fn what_one_runtime_compiles_another_maps_and_runs_the_same() {
    let dir = cache_dir("objects");
    let (mut hits, mut programs) = (0, 0);
    for name in example_names() {
        let obj = Object::parse(&std::fs::read(build_example(&name)).unwrap()).unwrap();
        let region = Arc::new(ShmRegion::anonymous(32 << 20).unwrap());
        let first = runtime(&region, &dir);
        let Ok(loaded) = first.load_object(&obj) else { continue };
        // Programs for the CPU (GPU probes are verified against other helpers).
        let cpu: Vec<u32> = loaded.programs.iter().map(|p| p.2).filter(|&id| first.program(id).is_ok()).collect();
        for &id in &cpu {
            assert!(matches!(first.program(id).unwrap().cached, Some(Outcome::Stored | Outcome::Hit)), "{name}: compiled at load");
        }
        // Another runtime over the same region: every program is a hit, the same program.
        let second = runtime(&region, &dir);
        let plain = Runtime::new(region.clone(), EngineKind::Interp);
        for &id in &cpu {
            let p = second.program(id).unwrap();
            assert_eq!(p.cached, Some(Outcome::Hit), "{name}: program {id}");
            let verified = plain.program(id).unwrap();
            assert!(p.program.insns() == verified.program.insns(), "{name}: program {id} resolved differently");
            assert_eq!(p.program.proof_counts(), verified.program.proof_counts(), "{name}: program {id}");
            // The mapped code computes what the interpreter computes.
            assert_eq!(outputs(&second, id), outputs(&plain, id), "{name}: program {id}");
            // Every function's code is known, and is the code the first runtime has (what
            // `BPF_OBJ_GET_INFO_BY_FD` hands out as jited).
            let original = first.program(id).unwrap();
            let (mapped, made) = (p.engine().machine_code(), original.engine().machine_code());
            assert_eq!(mapped.len(), p.program.functions().len(), "{name}: program {id}");
            assert!(mapped.iter().all(|f| !f.is_empty()) && mapped == made, "{name}: program {id}");
            hits += 1;
        }
        programs += cpu.len();
    }
    assert!(programs >= 30 && hits == programs, "{hits} hits of {programs} programs");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn entries_for_other_maps_tampered_or_untrusted_are_not_used() {
    let dir = cache_dir("trust");
    let obj = Object::parse(&std::fs::read(build_example("maps_globals")).unwrap()).unwrap();
    let region = Arc::new(ShmRegion::anonymous(32 << 20).unwrap());
    let loaded = runtime(&region, &dir).load_object(&obj).unwrap();
    let id = loaded.programs.iter().find(|p| p.0 == "count").unwrap().2;
    let reference = outputs(&Runtime::new(region.clone(), EngineKind::Interp), id);
    let fresh = |what: &str, want: fn(&Outcome) -> bool| {
        let rt = runtime(&region, &dir);
        let p = rt.program(id).unwrap();
        assert!(want(p.cached.as_ref().unwrap()), "{what}: {:?}", p.cached);
        assert_eq!(outputs(&rt, id), reference, "{what}: runs right");
    };
    fresh("untouched", |o| *o == Outcome::Hit);
    let entry = entries(&dir).into_iter().next().unwrap();

    // The same bytecode over maps of another size is other inputs: its own entry.
    let mut smaller = obj.clone();
    smaller.maps.iter_mut().for_each(|m| m.max_entries = m.max_entries.max(2) - 1);
    let before = entries(&dir).len();
    let other = Arc::new(ShmRegion::anonymous(32 << 20).unwrap());
    runtime(&other, &dir).load_object(&smaller).unwrap();
    assert!(entries(&dir).len() > before, "other map sizes made new entries");

    // An entry anyone may write is not run; it is replaced by a trusted one.
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    fresh("world-writable entry", |o| *o == Outcome::Stored);
    assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o644);
    fresh("replaced", |o| *o == Outcome::Hit);

    // A changed byte anywhere in the key, or a truncated file: compiled again.
    let mut bytes = std::fs::read(&entry).unwrap();
    // The footer gives the trailer's offset; the key follows its 8-byte length.
    let trailer = u64::from_le_bytes(bytes[bytes.len() - 16..bytes.len() - 8].try_into().unwrap()) as usize;
    bytes[trailer + 8 + 20] ^= 1;
    std::fs::write(&entry, &bytes).unwrap();
    fresh("key changed", |o| *o == Outcome::Stored);
    let len = std::fs::metadata(&entry).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&entry).unwrap().set_len(len - 9).unwrap();
    fresh("truncated", |o| *o == Outcome::Stored);

    // A directory others may write is refused outright.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut rt = Runtime::new(region.clone(), EngineKind::Jit);
    let err = rt.set_code_cache(&dir).unwrap_err().to_string();
    assert!(err.contains("writable only by its owner"), "{err}");
    // And a symbolic link, even to a trusted directory: whoever made it chose where code is read.
    let link = dir.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/usr/lib", &link).unwrap();
    assert!(rt.set_code_cache(&link).is_err(), "a link is not followed");
    std::fs::remove_file(&link).unwrap();
    // So is one owned by another user (root must never run code another user could write).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        assert!(rt.set_code_cache(&dir).is_err(), "a directory owned by nobody is not trusted");
    } else {
        println!("skipping the foreign-owner case: it needs root to chown");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The cache lives in memory (`/dev/shm`): it keeps at most 1,024 entries, dropping the oldest,
/// and the programs it dropped are simply compiled again.
#[test]
fn the_cache_keeps_its_newest_entries_within_bounds() {
    use bpftime_jit::cache::CodeCache;
    use bpftime_vm::{Checks, HelperTable, NoMaps};
    let dir = cache_dir("bounds");
    let cache = CodeCache::open(&dir, Default::default()).unwrap();
    let helpers = Arc::new(HelperTable::new());
    let program = |i: u32| bpftime_vm::asm::assemble(&format!("r0 = {i}\nexit")).unwrap();
    // A temporary file left by a writer that died long ago is removed too.
    let stale = dir.join(".0123456789abcdef0123456789abcdef.1.2");
    // Files not of the cache's making are left alone, however old.
    let foreign = dir.join(".profile");
    std::fs::write(&foreign, b"not ours").unwrap();
    std::fs::write(&stale, b"partial").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
    std::fs::File::options().write(true).open(&foreign).unwrap().set_modified(old).unwrap();
    for i in 0..1030u32 {
        let (_, outcome) = cache.program(&program(i), &helpers, &NoMaps, Checks::Unproven).unwrap();
        assert_eq!(outcome, Outcome::Stored, "program {i}");
    }
    assert_eq!(entries(&dir).len(), 1025, "1,024 entries kept, and the foreign file");
    assert!(!stale.exists(), "a dead writer's temporary file is removed");
    assert!(foreign.exists(), "a file the cache did not make is kept");
    let (jit, newest) = cache.program(&program(1029), &helpers, &NoMaps, Checks::Unproven).unwrap();
    assert_eq!(newest, Outcome::Hit);
    assert_eq!(bpftime_vm::exec::run(&jit, Context::Mem(&mut []), &Default::default()), Ok(1029));
    // The oldest were dropped: compiled again, right.
    let (jit, oldest) = cache.program(&program(0), &helpers, &NoMaps, Checks::Unproven).unwrap();
    assert_eq!(oldest, Outcome::Stored);
    assert_eq!(bpftime_vm::exec::run(&jit, Context::Mem(&mut []), &Default::default()), Ok(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Another layer's bytes (the agent keeps what it learnt of a library's code there) come back
/// for exactly their key, and not from an entry others could have written.
#[test]
fn blobs_come_back_for_their_key_from_trusted_entries_only() {
    use bpftime_jit::cache::CodeCache;
    let dir = cache_dir("blobs");
    let cache = CodeCache::open(&dir, Default::default()).unwrap();
    assert_eq!(cache.load_blob(b"libc facts"), None);
    cache.store_blob(b"libc facts", b"what was learnt");
    assert_eq!(cache.load_blob(b"libc facts").as_deref(), Some(&b"what was learnt"[..]));
    assert_eq!(cache.load_blob(b"libm facts"), None, "another key");
    let files = entries(&dir);
    assert_eq!(files.len(), 1);
    std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(cache.load_blob(b"libc facts"), None, "writable by others");
    std::fs::remove_dir_all(&dir).unwrap();
}
