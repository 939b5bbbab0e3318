//! Data-driven VM tests: one `.test` file per case under `tests/data/vm/`.
//!
//! A file has sections introduced by `-- name` lines:
//! - `-- asm` (llvm-objdump syntax, see `bpftime_vm::asm`) or `-- raw` (hex bytes) — the program;
//! - `-- mem` — hex bytes of the context memory (r1 points at a copy, r2 is its length);
//! - `-- budget` — the loop budget (a taken backward jump costs the length of its loop);
//! - `-- result` — expected r0, or `-- error` — a substring of the expected error
//!   (verifier errors and run-time faults both read `insn N: ...`);
//! - `-- mem-after` — expected memory after the run.
//!
//! Lines starting with `#` outside `-- asm` are comments. Programs may call the test helpers
//! of [`test_helpers`].

use bpftime_vm::conformance::{parse_hex_bytes, parse_result, unwind};
use bpftime_vm::exec::{Fault, HelperTable, RunState};
use std::collections::BTreeMap;
use std::path::Path;

/// One parsed case.
#[derive(Debug, Default, Clone)]
pub struct Case {
    pub name: String,
    pub program: Vec<u8>,
    pub mem: Vec<u8>,
    pub budget: Option<u64>,
    pub expect: Expect,
    pub mem_after: Option<Vec<u8>>,
}

/// What a case expects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Expect {
    #[default]
    Nothing,
    Result(u64),
    Error(String),
}

/// Parses a case file.
pub fn parse_case(name: &str, text: &str) -> Result<Case, String> {
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(sec) = line.strip_prefix("-- ") {
            current = Some(sec.trim().to_string());
            sections.entry(sec.trim().to_string()).or_default();
            continue;
        }
        match &current {
            Some(sec) => {
                let body = sections.get_mut(sec).expect("section exists");
                body.push_str(line);
                body.push('\n');
            }
            None if line.starts_with('#') || line.trim().is_empty() => {}
            None => return Err(format!("text before the first section: {line}")),
        }
    }
    let mut case = Case { name: name.to_string(), ..Case::default() };
    case.program = match (sections.get("asm"), sections.get("raw")) {
        (Some(asm), None) => bpftime_vm::insn::to_bytecode(&bpftime_vm::asm::assemble(asm).map_err(|e| e.to_string())?),
        (None, Some(raw)) => parse_hex_bytes(raw)?,
        _ => return Err("need exactly one of `-- asm` and `-- raw`".into()),
    };
    if let Some(m) = sections.get("mem") {
        case.mem = parse_hex_bytes(m)?;
    }
    if let Some(b) = sections.get("budget") {
        case.budget = Some(b.trim().parse().map_err(|e| format!("budget: {e}"))?);
    }
    case.expect = match (sections.get("result"), sections.get("error")) {
        (Some(r), None) => Expect::Result(parse_result(r)?),
        (None, Some(e)) => Expect::Error(e.trim().to_string()),
        _ => return Err("need exactly one of `-- result` and `-- error`".into()),
    };
    if let Some(m) = sections.get("mem-after") {
        case.mem_after = Some(parse_hex_bytes(m)?);
    }
    Ok(case)
}

/// Reads every `.test` file of a folder, sorted by name.
pub fn load_cases(dir: &Path) -> Vec<Case> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let name = p.file_stem().expect("file name").to_string_lossy().to_string();
            let text = std::fs::read_to_string(p).expect("readable case");
            parse_case(&name, &text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// Test helper 1: packs its five arguments' low nibbles (r1 | r2<<4 | ... | r5<<16).
pub extern "C" fn pack_args(r1: u64, r2: u64, r3: u64, r4: u64, r5: u64, _: &mut RunState) -> u64 {
    (r1 & 0xf) | (r2 & 0xf) << 4 | (r3 & 0xf) << 8 | (r4 & 0xf) << 12 | (r5 & 0xf) << 16
}

/// Test helper 2: the sum of the bytes at `[r1, r1 + r2)`, or -EFAULT when the program may
/// not read them.
pub extern "C" fn sum_bytes(r1: u64, r2: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    match state.slice(r1, r2) {
        Some(b) => b.iter().map(|&x| x as u64).sum(),
        None => (-14i64) as u64,
    }
}

/// Test helper 3: always fails with code -22.
pub extern "C" fn always_fails(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    state.helper_fault(Fault::Helper { id: 3, code: -22 });
    0
}

/// Test helper 6, a map lookup as the verifier sees one (its result is null or a whole 16-byte
/// value of the map in r1): for the `u32` key at r2 below 4, the first 16 bytes of the
/// 64-byte context for an even key and the last 16 for an odd one (so that an access a wrong
/// proof lets past either end of a value leaves the context and faults), else null (also
/// when the key cannot be read).
pub extern "C" fn lookup_in_context(_map: u64, key: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let ctx = state.context_region();
    match state.slice(key, 4).map(|k| u32::from_le_bytes(k.try_into().expect("4 bytes"))) {
        Some(k) if k < 4 && ctx.len == 64 => ctx.start + if k % 2 == 0 { 0 } else { 48 },
        _ => 0,
    }
}

/// Test helper 8, a BTF object as `bpf_get_current_task_btf` hands one out (see
/// `HelperReturn::BtfObject`): six words, lent for reading, laid out as two 24-byte objects
/// `{ child, null, value }`: the first's child is the second (value 99), the first's value is
/// 7, and the second's child and null pointer are both null.
pub extern "C" fn btf_object(_: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    static OBJECT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *OBJECT.get_or_init(|| {
        let words: &'static mut [u64; 6] = Box::leak(Box::new([0, 0, 7, 0, 0, 99]));
        words[0] = words.as_ptr() as u64 + 24;
        words.as_ptr() as usize
    }) as u64;
    state.lend_memory(addr, 48);
    addr
}

/// The map `lddw map_fd(1)` names in generated programs: the verifier learns that lookups in
/// it return 16-byte values (helper 6 returns them inside the context).
pub struct TestMaps;

impl bpftime_vm::LddwResolver for TestMaps {
    fn resolve(&self, kind: bpftime_vm::insn::LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
        match (kind, lo) {
            (bpftime_vm::insn::LddwKind::MapFd, 1) => Ok(0x6d61_7031),
            _ => Err("only map_fd(1) exists".into()),
        }
    }

    fn pointee(&self, _kind: bpftime_vm::insn::LddwKind, _lo: i32, _hi: i32) -> Option<bpftime_vm::analysis::Pointee> {
        Some(bpftime_vm::analysis::Pointee::Map { value_size: 16, key_size: 4, array: None })
    }
}

/// The helpers data-driven tests and differential tests may call: 1 pack_args, 2 sum_bytes,
/// 3 always_fails, 5 the conformance suite's unwind, 6 lookup_in_context, 8 btf_object (which
/// the GPU backend does not have: the cases that call it are in `tests/data/vm-cpu`; random
/// programs call 7 as an unknown helper).
pub fn test_helpers() -> HelperTable {
    let mut t = HelperTable::new();
    t.register(1, "pack_args", pack_args).register(2, "sum_bytes", sum_bytes).register(3, "always_fails", always_fails).register(5, "unwind", unwind);
    t.register(6, "lookup_in_context", lookup_in_context).register(8, "btf_object", btf_object);
    // Those that never stop the run say so (the JIT calls them without looking at the status
    // afterwards); always_fails and unwind stop it.
    for id in [1, 2] {
        t.set_effects(id, bpftime_vm::exec::HelperEffects { never_stops: true, ..Default::default() });
    }
    t.set_effects(6, bpftime_vm::exec::HelperEffects { returns: bpftime_vm::exec::HelperReturn::MapValueOrNull, leaves_stack: true, never_stops: true });
    t.set_effects(8, bpftime_vm::exec::HelperEffects { returns: bpftime_vm::exec::HelperReturn::BtfObject, leaves_stack: true, never_stops: true });
    t
}
