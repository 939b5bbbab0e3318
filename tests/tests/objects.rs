//! Clang-built objects: loading, running on both engines, disassembly against llvm-objdump,
//! and bad input.

use bpftime_jit::JitProgram;
use bpftime_object::{Object, ObjectError};
use bpftime_tests::clang::{build_example, example_names};
use bpftime_vm::exec::{run, Context, Engine, HelperTable, RunOptions};
use bpftime_vm::insn::decode;
use bpftime_vm::{disasm::Disasm, verify, Interpreter, NoMaps};
use std::process::Command;
use std::sync::Arc;

/// The example's checksum, computed the same way in Rust.
fn reference_checksum(values: &[u32]) -> u64 {
    let classify = |v: u32| match v % 6 {
        0 => v >> 1,
        1 => v.wrapping_mul(3).wrapping_add(1),
        2 => v.swap_bytes(),
        3 => (v as u16).swap_bytes() as u32,
        4 => v ^ 0xa5a5_a5a5,
        _ => !v,
    };
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h ^ classify(v) as u64).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn vm_functions_example_runs_on_both_engines() {
    let path = build_example("vm_functions");
    let obj = Object::parse(&std::fs::read(&path).unwrap()).expect("parses");
    let prog = obj.program(Some("checksum")).expect("has checksum");
    assert!(prog.data_relocs.is_empty());
    assert!(prog.insns.len() > 30, "linked with its .text callees");
    let program = Arc::new(verify(&prog.insns, Arc::new(HelperTable::new()), &NoMaps).expect("verifies"));
    assert!(program.functions().len() >= 3, "entry plus the two noinline functions");
    let values: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 0xdead_beef, 0x1234_5678, 7, 8, 9, 10];
    let mut mem = vec![0u8; 16 + 64];
    mem[..8].copy_from_slice(&(values.len() as u64).to_le_bytes());
    for (i, v) in values.iter().enumerate() {
        mem[16 + 4 * i..20 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    let engines: [Box<dyn Engine>; 2] = [Box::new(Interpreter::new(program.clone())), Box::new(JitProgram::compile(program).unwrap())];
    for engine in engines {
        let mut m = mem.clone();
        let r0 = run(engine.as_ref(), Context::Mem(&mut m), &RunOptions::default()).expect("runs");
        assert_eq!(r0, reference_checksum(&values));
        assert_eq!(u64::from_le_bytes(m[8..16].try_into().unwrap()), values.len() as u64, "atomic counter");
    }
}

/// Our disassembly of each function equals llvm-objdump's, line by line (llvm-objdump 14
/// cannot print 32-bit atomics and prints local calls ambiguously; those lines are skipped).
#[test]
fn disassembly_matches_llvm_objdump() {
    let mut compared = 0;
    for name in example_names() {
        let path = build_example(&name);
        let out = Command::new("llvm-objdump").arg("-d").arg(&path).output();
        let Ok(out) = out else {
            println!("skip: llvm-objdump not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let obj = Object::parse(&std::fs::read(&path).unwrap()).unwrap();
        for prog in &obj.programs {
            let theirs = llvm_function_lines(&text, &prog.section, &prog.name);
            let insns = decode(&prog.insns).unwrap();
            // (slot, text), lddw second halves dropped as llvm-objdump does.
            let ours: Vec<(usize, String)> =
                insns.iter().enumerate().filter(|(_, i)| !matches!(i, bpftime_vm::Insn::LddwHigh)).map(|(pc, i)| (pc, Disasm(i).to_string())).collect();
            assert!(theirs.len() <= ours.len(), "{name}/{}: llvm has more lines", prog.name);
            for (k, (t, (pc, o))) in theirs.iter().zip(&ours).enumerate() {
                // Skip what llvm cannot print (v4 atomics), local calls (printed ambiguously by
                // llvm) and instructions that relocations rewrite (map and callback lddw).
                let relocated = prog.data_relocs.iter().any(|r| r.insn == *pc) || o.contains("func(");
                // llvm-objdump 14 prints a 32-bit fetch-add as a plain `lock ... +=`.
                let llvm14_fetch = t.starts_with("lock ") && o.contains("atomic_fetch_add((u32 *)");
                if t == "<unknown>" || o.starts_with("call pc") || relocated || llvm14_fetch {
                    continue;
                }
                assert_eq!(o, t, "{name}/{} line {k}", prog.name);
                compared += 1;
            }
        }
    }
    assert!(compared >= 20, "compared {compared} lines");
}

/// The instruction texts of one function in llvm-objdump output, labels stripped.
fn llvm_function_lines(text: &str, section: &str, function: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_section = false;
    let mut in_function = false;
    for l in text.lines() {
        if let Some(s) = l.strip_prefix("Disassembly of section ") {
            in_section = s.trim_end_matches(':') == section;
            in_function = false;
            continue;
        }
        if !in_section {
            continue;
        }
        if l.ends_with(">:") && !l.starts_with(' ') {
            let label = l.split('<').nth(1).unwrap_or("").trim_end_matches(">:");
            if !label.starts_with("LBB") {
                in_function = label == function;
            }
            continue;
        }
        if !in_function {
            continue;
        }
        // "      12:\t79 61 00 ...\tr1 = *(u64 *)(r6 + 0)"
        let mut parts = l.splitn(3, '\t');
        let (Some(idx), Some(_bytes), Some(asm)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if !idx.trim_end().ends_with(':') {
            continue;
        }
        let asm = match asm.rfind(" <") {
            Some(p) if asm.ends_with('>') && !asm.starts_with('<') => &asm[..p],
            _ => asm,
        };
        lines.push(asm.trim().to_string());
    }
    lines
}

#[test]
fn bad_objects_are_clear_errors() {
    let good = std::fs::read(build_example("vm_functions")).unwrap();
    // Truncated: the section table points past the end.
    let e = Object::parse(&good[..good.len() / 2]).unwrap_err();
    assert!(matches!(e, ObjectError::Elf(_)), "{e}");
    // Garbage after the ELF magic.
    let mut garbage = b"\x7fELF".to_vec();
    garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    assert!(Object::parse(&garbage).is_err());
    // A real ELF for another machine.
    let native = std::fs::read("/bin/true").expect("/bin/true exists");
    let e = Object::parse(&native).unwrap_err();
    assert!(matches!(e, ObjectError::NotBpf(_)), "{e}");
    // Asking for a program that is not there names the ones that are.
    let obj = Object::parse(&good).unwrap();
    let e = obj.program(Some("nope")).unwrap_err().to_string();
    assert!(e.contains("checksum (vm)"), "{e}");
    // A global data section whose header claims more bytes than a map value may hold (an
    // uninitialised `.bss` has no bytes in the file to bound it): refused, not allocated.
    let mut huge = std::fs::read(build_example("maps_globals")).unwrap();
    let word = |b: &[u8], at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |v, &x| v << 8 | x as u64) as usize;
    let (shoff, shnum, shstrndx) = (word(&huge, 0x28, 8), word(&huge, 0x3c, 2), word(&huge, 0x3e, 2));
    let names = word(&huge, shoff + shstrndx * 64 + 24, 8);
    let bss = (0..shnum).map(|i| shoff + i * 64).find(|&h| huge[names + word(&huge, h, 4)..].starts_with(b".bss\0")).expect("maps_globals has a .bss");
    huge[bss + 32..bss + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = Object::parse(&huge).unwrap_err().to_string();
    assert!(e.contains(".bss") && e.contains("more than a map value may hold"), "{e}");
    // Corrupt every byte in turn (a sample of positions): never a panic.
    for pos in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[pos] ^= 0xff;
        if let Ok(obj) = Object::parse(&bad) {
            for p in &obj.programs {
                let _ = verify(&p.insns, Arc::new(HelperTable::new()), &NoMaps);
            }
        }
    }
}

/// Clang-built objects with a few bytes changed (in their BTF, relocations, map definitions,
/// code, anywhere) load into a region or fail with an error: the object parser, BTF, CO-RE
/// relocation, map creation and the verifier never panic on what a user hands `bpftime load`.
#[test]
fn mutated_objects_load_or_fail_without_panicking() {
    use bpftime_runtime::{EngineKind, Runtime};
    use bpftime_shm::ShmRegion;
    let rounds: u64 = std::env::var("BPFTIME_FUZZ_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let names = ["core_relocs", "maps_globals", "map_in_map", "ringbuf_events", "loader_usdt", "tail_calls", "malloc_per_pid", "stacks"];
    let objects: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, std::fs::read(build_example(n)).unwrap())).collect();
    let mut rng = bpftime_tests::rng::Rng(0x5eed_0b1e);
    let region_name = format!("bpftime-objfuzz-{}", std::process::id());
    for round in 0..rounds {
        for (name, good) in &objects {
            let mut bad = good.clone();
            let changes = 1 + rng.below(4);
            let mut what = vec![];
            for _ in 0..changes {
                let pos = rng.below(bad.len() as u64) as usize;
                let value = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => bad[pos] ^ (1 << rng.below(8)),
                    _ => rng.below(256) as u8,
                };
                what.push((pos, value));
                bad[pos] = value;
            }
            let _ = ShmRegion::remove(&region_name);
            let region = Arc::new(ShmRegion::create(&region_name, 4 << 20).unwrap());
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Ok(obj) = Object::parse(&bad) {
                    let _ = Runtime::new(region.clone(), EngineKind::Interp).load_object(&obj);
                }
            }));
            let _ = ShmRegion::remove(&region_name);
            assert!(r.is_ok(), "round {round}: {name} with bytes {what:?} (offset, new value) panicked");
        }
    }
}

/// `.BTF.ext`'s func_info and line_info follow each program as it is linked: a record per
/// function (the program at 0, each `.text` function it takes the address of where the linker
/// put it), line records in instruction order inside each, and every type and string they
/// name in the object's BTF.
#[test]
fn debug_records_follow_the_linked_program() {
    let obj = Object::parse(&std::fs::read(build_example("map_walks")).unwrap()).unwrap();
    let btf = obj.btf.as_ref().expect("BTF");
    let p = obj.program(Some("on_add")).unwrap();
    let word = |r: &[u8], at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
    let funcs: Vec<(u32, String)> = p.func_info.chunks(8).map(|r| (word(r, 0), btf.get(word(r, 4)).unwrap().name.clone())).collect();
    // The callbacks' addresses (`lddw` of a function) are where the linker put them.
    let callbacks: Vec<u32> =
        (0..p.insns.len()).filter(|&i| p.insns[i].opc == 0x18 && p.insns[i].src == 4).map(|i| (i as i64 + 1 + p.insns[i].imm as i64) as u32).collect();
    assert_eq!(funcs[0], (0, "on_add".to_string()), "{funcs:?}");
    for (at, name) in [(callbacks[0], "visit_hash"), (callbacks[1], "visit_array")] {
        assert!(funcs.contains(&(at, name.to_string())), "{name} at {at}: {funcs:?}");
    }
    let lines: Vec<u32> = p.line_info.chunks(16).map(|r| word(r, 0)).collect();
    assert!(lines.len() > 20 && lines[0] == 0, "{lines:?}");
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "in instruction order: {lines:?}");
    assert!(lines.iter().all(|&i| (i as usize) < p.insns.len()));
    let first_line = btf.string(word(&p.line_info[..16], 8)).unwrap();
    assert!(first_line.contains("BPF_KPROBE(on_add"), "{first_line}");
}
