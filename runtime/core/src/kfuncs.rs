//! Kernel functions (kfuncs) a program may call, run in userspace: the numeric iterator behind
//! libbpf's `bpf_for()` / `bpf_repeat()` (`bpf_iter_num_new`, `_next`, `_destroy`) and the
//! RCU and preemption sections (nothing to do here). A loader names a kfunc by its BTF id in
//! the kernel's BTF (libbpf resolves `__ksym` externs so); an object by its extern symbol.
//! Either way the call becomes a call of a helper of ours, whose id [`helper_id`] gives (ids
//! no kernel helper has), so the verifier and the engines treat it as any helper.

use crate::helpers;
use bpftime_maps::Errno;
use bpftime_object::btf::{Btf, Kind};
use bpftime_vm::exec::{HelperFn, HelperTable, RunState};
use bpftime_vm::insn::{call_src, RawInsn};

/// The first helper id kfuncs take: past the kernel's helpers and bpftime's own (its GPU
/// helpers 501-511, its `ufunc` calls 1000 and 1001).
const FIRST_ID: u32 = 3000;

/// The kfuncs we run, in id order from [`FIRST_ID`]: name, function, and whether it touches
/// no memory of the program's.
const KFUNCS: [(&str, HelperFn, bool); 7] = [
    ("bpf_iter_num_new", iter_num_new, false),
    ("bpf_iter_num_next", iter_num_next, false),
    ("bpf_iter_num_destroy", iter_num_destroy, false),
    ("bpf_rcu_read_lock", nothing, true),
    ("bpf_rcu_read_unlock", nothing, true),
    ("bpf_preempt_disable", nothing, true),
    ("bpf_preempt_enable", nothing, true),
];

/// Whether helper id `id` is one a kfunc runs as (a loader's plain call of it is refused:
/// the kernel has no such helper).
pub fn is_kfunc_id(id: u32) -> bool {
    (FIRST_ID..FIRST_ID + KFUNCS.len() as u32).contains(&id)
}

/// The helper id kfunc `name` runs as, if we run it.
pub fn helper_id(name: &str) -> Option<u32> {
    KFUNCS.iter().position(|k| k.0 == name).map(|i| FIRST_ID + i as u32)
}

/// `struct bpf_iter_num` (8 opaque bytes): the last number given and the end, as the kernel
/// keeps them.
fn iter_state(state: &mut RunState, it: u64) -> Option<&mut [u8]> {
    state.slice_mut(it, 8)
}

fn put_iter(s: &mut [u8], cur: i32, end: i32) {
    s[..4].copy_from_slice(&cur.to_le_bytes());
    s[4..8].copy_from_slice(&end.to_le_bytes());
}

/// `int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end)`: an iterator over
/// `[start, end)`; `-EINVAL` if `start > end`, `-E2BIG` for more than `BPF_MAX_LOOPS`
/// numbers (the iterator then gives none).
extern "C" fn iter_num_new(it: u64, start: u64, end: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let (start, end) = (start as i32, end as i32);
    let Some(s) = iter_state(state, it) else { return Errno::EINVAL.as_helper_result() };
    put_iter(s, 0, 0);
    if start > end {
        return Errno::EINVAL.as_helper_result();
    }
    if end as i64 - start as i64 > helpers::MAX_LOOPS as i64 {
        return Errno::E2BIG.as_helper_result();
    }
    put_iter(s, start.wrapping_sub(1), end);
    0
}

/// `int *bpf_iter_num_next(struct bpf_iter_num *it)`: the address of the next number (inside
/// the iterator), or NULL when there is none.
extern "C" fn iter_num_next(it: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    let Some(s) = iter_state(state, it) else { return 0 };
    let cur = i32::from_le_bytes(s[..4].try_into().expect("4 bytes"));
    let end = i32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
    // As the kernel: the next number in 32 bits (from INT_MAX it wraps to INT_MIN, which a
    // range starting at INT_MIN begins with), compared with the end in 64.
    let next = cur.wrapping_add(1);
    if next as i64 >= end as i64 {
        put_iter(s, 0, 0);
        return 0;
    }
    put_iter(s, next, end);
    it
}

/// `void bpf_iter_num_destroy(struct bpf_iter_num *it)`.
extern "C" fn iter_num_destroy(it: u64, _: u64, _: u64, _: u64, _: u64, state: &mut RunState) -> u64 {
    if let Some(s) = iter_state(state, it) {
        put_iter(s, 0, 0);
    }
    0
}

/// RCU read sections and preemption: a userspace run holds nothing these protect.
extern "C" fn nothing(_: u64, _: u64, _: u64, _: u64, _: u64, _: &mut RunState) -> u64 {
    0
}

/// Adds the kfuncs to a helper table.
pub(crate) fn register(t: &mut HelperTable) {
    for (i, &(name, f, _)) in KFUNCS.iter().enumerate() {
        t.register(FIRST_ID + i as u32, name, f);
    }
}

/// Whether helper id `id` is a kfunc's that touches no memory of the program's.
pub(crate) fn reads_nothing(id: u32) -> bool {
    id.checked_sub(FIRST_ID).and_then(|i| KFUNCS.get(i as usize)).is_some_and(|k| k.2)
}

/// [`resolve_kernel_ids`] with the kernel's BTF as raw bytes (parsed only when the program
/// calls a kfunc).
pub fn resolve_with_raw_kernel_btf(insns: &mut [RawInsn], raw: Option<&[u8]>) -> Result<(), String> {
    if !insns.iter().any(|i| i.opc == 0x85 && i.src == call_src::KFUNC) {
        return Ok(());
    }
    let btf = raw.and_then(|r| Btf::parse(r).ok());
    resolve_kernel_ids(insns, btf.as_ref())
}

/// Rewrites the kfunc calls of a program a loader resolved against the kernel's BTF (call
/// `src` 2, `imm` the BTF id of a `FUNC` in vmlinux's BTF, `off` 0) into calls of our helpers.
/// The error names the first kfunc we do not run, with its index.
pub fn resolve_kernel_ids(insns: &mut [RawInsn], kernel_btf: Option<&Btf>) -> Result<(), String> {
    for (pc, insn) in insns.iter_mut().enumerate() {
        if insn.opc != 0x85 || insn.src != call_src::KFUNC {
            continue;
        }
        let name = kernel_btf.filter(|_| insn.off == 0).and_then(|b| b.get(insn.imm as u32).ok()).filter(|t| t.kind == Kind::Func).map(|t| t.name.clone());
        let id = name.as_deref().and_then(helper_id);
        match (id, name) {
            (Some(id), _) => {
                insn.src = 0;
                insn.imm = id as i32;
            }
            (None, Some(name)) => return Err(format!("insn {pc}: kfunc {name} is not supported by bpftime (it runs {})", KFUNCS.map(|k| k.0).join(", "))),
            (None, None) => {
                return Err(format!("insn {pc}: kfunc with BTF id {} (module BTF {}) is not one of the kernel's functions bpftime knows", insn.imm, insn.off))
            }
        }
    }
    Ok(())
}
