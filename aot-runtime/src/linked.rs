//! The AOT object the system linker put into this program: its three data objects (see
//! [`bpftime_jit::aot`]) reached through their symbols, and each program's code and import
//! slots through the links table.

use bpftime_jit::aot::{parse_index, AotEntry};
use bpftime_jit::{JitError, JitProgram};
use bpftime_vm::Program;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

extern "C" {
    // Declared without a size: only their addresses are used, and the memory there (whose
    // size the object gives) is reached through pointers with exposed provenance.
    /// The eBPF object: a little-endian `u64` length, then the bytes.
    static bpftime_aot_object: [u8; 0];
    /// The index: a little-endian `u64` length, then the bytes.
    static bpftime_aot_index: [u8; 0];
    /// The links table: `u64` words, addresses filled in by the linker.
    static bpftime_aot_links: [u64; 0];
}

/// A pointer to the data at `symbol`'s address, for memory Rust knows no size of.
fn at<T>(symbol: *const [T; 0]) -> *const T {
    std::ptr::with_exposed_provenance(symbol as usize)
}

/// A framed data object at `start`.
///
/// # Safety
/// `start` must be the start of a data object `bpftime aot compile` wrote: a length word and
/// that many bytes after it, immutable.
unsafe fn framed(start: *const u8) -> &'static [u8] {
    // SAFETY: per the contract, 8 readable bytes (maybe unaligned), then `len` more.
    unsafe {
        let len = (start as *const u64).read_unaligned();
        std::slice::from_raw_parts(start.add(8), len as usize)
    }
}

/// The eBPF object linked into this program.
pub(crate) fn bpf_object() -> &'static [u8] {
    // SAFETY: the symbol is defined by the AOT object linked into this program (the link fails
    // without it) as a framed, read-only data object.
    unsafe { framed(at(&raw const bpftime_aot_object)) }
}

/// Whether a handle runs the linked code now: its slots hold that handle's values, so only
/// one may (see [`CodeClaim`]).
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The right to fill the linked code's slots and run it, held by one handle at a time and
/// given back on drop.
pub(crate) struct CodeClaim(());

impl CodeClaim {
    /// The claim, unless another handle holds it.
    pub(crate) fn take() -> Option<CodeClaim> {
        CLAIMED.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| CodeClaim(()))
    }
}

impl Drop for CodeClaim {
    fn drop(&mut self) {
        CLAIMED.store(false, Ordering::Release);
    }
}

/// One program's linked code and slots.
pub(crate) struct Linked {
    pub entry: AotEntry,
    functions: Vec<*const u8>,
    slots: Vec<*mut u64>,
}

impl Linked {
    /// Runs `program` with this code (see [`AotEntry::bind`]), for the handle holding `_claim`.
    pub(crate) fn bind(&self, program: Arc<Program>, _claim: &CodeClaim) -> Result<JitProgram, JitError> {
        // SAFETY: the addresses come from the links table of the object that holds this entry,
        // relocated by the system linker. The slots are written while the handle is opened,
        // before it is handed out, and only by the handle holding the one `CodeClaim`: no run
        // of any handle reads them meanwhile, and no other handle rewrites them later.
        unsafe { self.entry.bind(program, &self.functions, &self.slots) }
    }
}

/// Every program of the linked-in object, by name.
pub(crate) fn programs() -> Result<HashMap<String, Linked>, JitError> {
    // SAFETY: as for `bpf_object`.
    let entries = parse_index(unsafe { framed(at(&raw const bpftime_aot_index)) })?;
    let words = at(&raw const bpftime_aot_links);
    let mut at = 0usize;
    let mut next = || {
        // SAFETY: the table holds, for each program of the index in order, a count of
        // functions, their addresses, a count of slots and their addresses: `parse_index`
        // read the same object's index, and the walk below follows that layout exactly.
        let w = unsafe { words.add(at).read() };
        at += 1;
        w
    };
    let mut out = HashMap::new();
    for entry in entries {
        let functions = (0..next()).map(|_| next() as *const u8).collect();
        let slots: Vec<*mut u64> = (0..next()).map(|_| next() as *mut u64).collect();
        if slots.len() != entry.slots.len() {
            return Err(JitError::Load(format!("program `{}`: the links table does not match the index", entry.name)));
        }
        out.insert(entry.name.clone(), Linked { entry, functions, slots });
    }
    Ok(out)
}
