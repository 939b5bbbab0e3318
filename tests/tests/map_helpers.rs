//! Helpers against the kernel: the programs of `examples/bpf/map_helpers.bpf.c` and
//! `helper_answers.bpf.c` write what each helper call answered (return codes, what lookups find,
//! per-CPU values seen from every CPU, ring buffer positions, formatted text, the task's ids) to
//! an array; each runs in the kernel (BPF_PROG_TEST_RUN, in this thread) and on both of our
//! engines, in the same order on fresh maps, and the three must have written the same.

use bpftime_maps::Map;
use bpftime_object::Object;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use bpftime_tests::clang::build_example;
use bpftime_tests::kernel::KernelObject;
use bpftime_vm::exec::Context;
use std::sync::Arc;

const OUT_SLOTS: u32 = 96;

/// What a program returned (the number of slots it wrote) and those slots.
type Answers = (u64, Vec<i64>);

fn slots(read: impl Fn(u32) -> Option<Vec<u8>>, n: u64) -> Vec<i64> {
    (0..n.min(OUT_SLOTS as u64) as u32).map(|k| read(k).map_or(i64::MIN, |v| i64::from_le_bytes(v[..8].try_into().unwrap()))).collect()
}

/// Program array slots to fill before the runs: (map, index, program).
type TailTargets<'a> = &'a [(&'a str, u32, &'a str)];

fn kernel_answers(obj: &Object, programs: &[&str], ctx: &[u8], tails: TailTargets) -> Option<Vec<Answers>> {
    let k = match KernelObject::load(obj) {
        Ok(k) => k,
        Err(e) if e.contains("needs root") => {
            println!("skip: {e}");
            return None;
        }
        Err(e) => panic!("the kernel refused the programs: {e}"),
    };
    for (map, index, prog) in tails {
        let fd = k.program_fd(prog).unwrap_or_else(|| panic!("no program {prog}"));
        k.update(map, &index.to_le_bytes(), &fd.to_le_bytes()).unwrap();
    }
    let answers = programs
        .iter()
        .map(|name| {
            let r = k.test_run(name, &mut ctx.to_vec()).unwrap_or_else(|e| panic!("{e}")) as u64;
            (r, slots(|key| k.lookup("out", &key.to_le_bytes(), 8), r))
        })
        .collect();
    Some(answers)
}

fn our_answers(obj: &Object, engine: EngineKind, programs: &[&str], ctx: &[u8], tails: TailTargets) -> Vec<Answers> {
    let rt = Runtime::new(Arc::new(ShmRegion::anonymous(16 << 20).unwrap()), engine);
    let loaded = rt.load_object(obj).unwrap_or_else(|e| panic!("{engine:?}: {e}"));
    let map = |name: &str| -> &Map { loaded.maps.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("no map {name}")) };
    for (name, index, prog) in tails {
        let id = loaded.programs.iter().find(|p| p.0 == *prog).unwrap_or_else(|| panic!("no program {prog}")).2;
        map(name).update(&index.to_le_bytes(), &id.to_le_bytes(), 0).unwrap();
    }
    let out = map("out");
    programs
        .iter()
        .map(|name| {
            let id = loaded.programs.iter().find(|p| p.0 == *name).unwrap_or_else(|| panic!("no program {name}")).2;
            let prog = rt.program(id).unwrap();
            let r = rt.run(&prog, Context::Mem(&mut ctx.to_vec()), 0, 0, false).unwrap_or_else(|e| panic!("{engine:?} {name}: {e}"));
            let read = |key: u32| {
                let mut v = vec![0u8; 8];
                out.lookup(&key.to_le_bytes(), &mut v).ok().map(|_| v)
            };
            (r, slots(read, r))
        })
        .collect()
}

/// Runs `programs` of `example` in order on context `ctx` in the kernel and on both engines, and
/// compares what each wrote.
fn agree_with_the_kernel(example: &str, programs: &[&str], ctx: &[u8], tails: TailTargets) {
    let obj = Object::parse(&std::fs::read(build_example(example)).unwrap()).unwrap();
    let Some(kernel) = kernel_answers(&obj, programs, ctx, tails) else { return };
    for engine in [EngineKind::Interp, EngineKind::Jit] {
        let ours = our_answers(&obj, engine, programs, ctx, tails);
        for ((name, k), o) in programs.iter().zip(&kernel).zip(&ours) {
            assert!(k.0 > 0, "{name}: the kernel's run wrote nothing");
            assert_eq!(o, k, "{name} on {engine:?} (left) and in the kernel (right): (slots written, slots)");
        }
    }
}

#[test]
fn map_helpers_answer_what_the_kernel_answers() {
    let programs =
        ["hash_flags", "lru_flags", "array_flags", "percpu_values", "queue_and_stack", "bloom_filter", "ring_buffer", "longest_prefix", "tail_chain"];
    agree_with_the_kernel("map_helpers", &programs, &[0; 8], &[("chain", 0, "tail_chain")]);
}

#[test]
fn other_helpers_answer_what_the_kernel_answers() {
    use std::os::unix::fs::MetadataExt;
    static TEXT: &[u8] = b"hello, user memory!\0";
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    // Two pages, the second unreadable; "abc" (no NUL) in the last bytes of the first.
    // SAFETY: a fresh anonymous mapping of two pages, made unreadable past the first; only
    // its first page is written (mmap(2), mprotect(2)).
    let edge = unsafe {
        let p = libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(p.add(4096) as *mut libc::c_void, 4096, libc::PROT_NONE), 0);
        std::ptr::copy_nonoverlapping(b"abc".as_ptr(), p.add(4093), 3);
        p.add(4093) as u64
    };
    let ctx = [TEXT.as_ptr() as u64, ns.dev(), ns.ino(), edge].map(u64::to_le_bytes).concat();
    agree_with_the_kernel("helper_answers", &["formatting", "strings", "current_task", "user_memory", "printing"], &ctx, &[]);
}
