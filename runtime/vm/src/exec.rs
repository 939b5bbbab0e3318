//! What both engines share at run time: the helper ABI, the per-run [`RunState`], memory
//! regions and their checks, and the [`run`] harness that turns a run into `Result<u64, RunError>`.
//!
//! The JIT reads `RunState` fields directly (it is `repr(C)`), so the layout here is ABI.

use crate::insn::MemSize;
use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

/// Bytes of stack for one function frame.
pub const FRAME_SIZE: usize = 512;
/// Most frames a program may have live at once (the entry function and 7 nested local calls).
pub const MAX_CALL_DEPTH: usize = 8;
/// Bytes of stack a run gets: one frame per call level.
pub const STACK_SIZE: usize = FRAME_SIZE * MAX_CALL_DEPTH;
/// Default loop budget of a run: how much loop work it may do before it is stopped with
/// [`Fault::LoopBudget`] (the verifier does not prove termination; this bounds it).
///
/// The unit is one instruction of a loop body: a taken backward jump costs the length of the
/// loop it closes ([`back_edge_cost`]), and a callback that a helper runs (`bpf_loop`) costs the
/// length of its function, so a budget bounds the instructions a run executes, whatever its
/// loops look like.
pub const DEFAULT_LOOP_BUDGET: u64 = 1 << 30;
/// Default loop budget of one probe hit: keeps a hit of a runaway program under about a
/// millisecond on either engine (see the README's figures), so a hot probe cannot hang the
/// application.
pub const PROBE_LOOP_BUDGET: u64 = 1 << 17;

/// What a taken backward jump of offset `off` (< 0) costs: the number of slots of the loop it
/// closes (from the target to the jump itself).
#[inline(always)]
pub fn back_edge_cost(off: i64) -> u64 {
    off.unsigned_abs()
}

/// A helper function as both engines call it: five arguments, the run's state, a result in r0.
///
/// A helper must not panic. It may end the program early with [`RunState::stop`] or
/// [`RunState::fault`]; the engines check after every helper call.
pub type HelperFn = extern "C" fn(u64, u64, u64, u64, u64, &mut RunState) -> u64;

/// Calls a function of the running program for a helper (a callback such as bpf_loop's):
/// `(engine, state, first slot of the function, r1..r5) -> r0`.
pub type CallbackFn = fn(*const c_void, &mut RunState, usize, [u64; 5]) -> u64;

/// A helper known to the verifier and callable from programs.
#[derive(Clone, Copy, Debug)]
pub struct Helper {
    /// Name used in error messages (the kernel's name where it has one).
    pub name: &'static str,
    /// The function.
    pub func: HelperFn,
    /// What the verifier may assume about it (nothing, unless its registrant says so).
    pub effects: HelperEffects,
}

/// What a helper's result is, for the verifier's range analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HelperReturn {
    /// A number, or a pointer the analysis does not track.
    #[default]
    Scalar,
    /// Null or a pointer to a whole value of the map passed in r1 (`bpf_map_lookup_elem`).
    MapValueOrNull,
    /// Null or a pointer to as many bytes as argument register `size_arg` holds (a constant),
    /// such as `bpf_ringbuf_reserve`'s record.
    MemOrNull {
        /// The argument register (1-5) that holds the size (any other proves nothing).
        size_arg: u8,
    },
    /// Null or a pointer to a kernel object typed by BTF (`bpf_get_current_task_btf`'s task),
    /// which the program may read directly, as the kernel lets it: a load through it, or
    /// through a pointer loaded from it, that finds no memory reads 0 and the run goes on
    /// (the kernel's fault-tolerant `PROBE_MEM` loads). Stores through it keep their check.
    BtfObject,
}

/// What the verifier may assume about a helper. The defaults assume nothing: a helper may
/// write anywhere its arguments point, the stack included, and returns an untracked value.
/// A runtime that declares more must make it true of its function: proofs rest on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelperEffects {
    /// What it returns.
    pub returns: HelperReturn,
    /// It never writes the program's stack: it only reads what its arguments point to, and
    /// runs no callback of the program (which could write there through a pointer argument).
    pub leaves_stack: bool,
    /// It never stops or faults the run and spends none of its loop budget (no
    /// [`RunState::stop`], [`RunState::helper_fault`], [`RunState::charge`] or callback):
    /// compiled code need not look at the run's status after calling it.
    pub never_stops: bool,
}

/// Helpers by id. Ids follow the kernel's `enum bpf_func_id` where the helper is a kernel one.
#[derive(Clone, Debug, Default)]
pub struct HelperTable {
    entries: Vec<Option<Helper>>,
    fns: Vec<Option<HelperFn>>,
}

impl HelperTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the helper with id `id`.
    pub fn register(&mut self, id: u32, name: &'static str, func: HelperFn) -> &mut Self {
        let i = id as usize;
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
            self.fns.resize(i + 1, None);
        }
        self.entries[i] = Some(Helper { name, func, effects: HelperEffects::default() });
        self.fns[i] = Some(func);
        self
    }

    /// Declares what the verifier may assume about the registered helper `id` (see
    /// [`HelperEffects`]); does nothing if there is none.
    pub fn set_effects(&mut self, id: u32, effects: HelperEffects) -> &mut Self {
        if let Some(Some(h)) = self.entries.get_mut(id as usize) {
            h.effects = effects;
        }
        self
    }

    /// The helper with id `id`.
    pub fn get(&self, id: u32) -> Option<&Helper> {
        self.entries.get(id as usize)?.as_ref()
    }

    /// Every registered helper with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Helper)> {
        self.entries.iter().enumerate().filter_map(|(i, h)| Some((i as u32, h.as_ref()?)))
    }

    /// Dense function array for dispatch by id (`callx`).
    pub fn functions(&self) -> &[Option<HelperFn>] {
        &self.fns
    }
}

/// A memory range a program may access besides its stack and context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Whether stores are allowed.
    pub writable: bool,
}

impl Region {
    /// A read-only region over a byte slice.
    pub fn of(bytes: &[u8]) -> Region {
        Region { start: bytes.as_ptr() as u64, len: bytes.len() as u64, writable: false }
    }

    /// A writable region over a byte slice.
    pub fn of_mut(bytes: &mut [u8]) -> Region {
        Region { start: bytes.as_mut_ptr() as u64, len: bytes.len() as u64, writable: true }
    }

    fn contains(&self, addr: u64, size: u64) -> bool {
        let off = addr.wrapping_sub(self.start);
        off < self.len && self.len - off >= size
    }
}

/// A region checked inline by the JIT: `addr - start <= last[log2(size)]` means inside.
///
/// Only regions of at least 8 bytes are kept here (so no `last` underflows); a smaller or
/// absent region is replaced by the state's own 8-byte scratch area, which is harmless to touch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FastRegion {
    /// First address.
    pub start: u64,
    /// Largest offset at which an access of 1, 2, 4, 8 bytes still fits.
    pub last: [u64; 4],
}

impl FastRegion {
    #[inline(always)]
    fn new(start: u64, len: u64) -> FastRegion {
        debug_assert!(len >= 8);
        FastRegion { start, last: [len - 1, len - 2, len - 4, len - 8] }
    }

    #[inline]
    fn contains(&self, addr: u64, size: MemSize) -> bool {
        addr.wrapping_sub(self.start) <= self.last[size_index(size)]
    }
}

/// Regions checked inline by the JIT: the stack, the context, and the first extra region
/// (for a runtime, the shared region that holds map values).
pub const FAST_REGIONS: usize = 3;

/// Index of an access size in [`FastRegion::last`].
pub fn size_index(size: MemSize) -> usize {
    match size {
        MemSize::B => 0,
        MemSize::H => 1,
        MemSize::W => 2,
        MemSize::DW => 3,
    }
}

/// `RunState::status` while running.
pub const STATUS_RUNNING: u32 = 0;
/// `RunState::status` after a helper asked to stop; the result is `stop_value`.
pub const STATUS_STOPPED: u32 = 1;
/// `RunState::status` after a fault; details in `fault`.
pub const STATUS_FAULT: u32 = 2;

/// Why a run ended with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A load, store or atomic outside every region the program may touch.
    OutOfBounds { addr: u64, size: u8, write: bool },
    /// An atomic operation on an address not aligned to its size.
    Misaligned { addr: u64, size: u8 },
    /// `callx` with an id that names no helper.
    UnknownHelper { id: u64 },
    /// The run did more loop work than its budget allows (see [`DEFAULT_LOOP_BUDGET`]).
    LoopBudget,
    /// A helper reported an error.
    Helper { id: u32, code: i64 },
    /// A helper was given a callback that is not a function of the program.
    BadCallback { pc: u64 },
    /// A helper called back into the program from inside a callback (not supported: callbacks
    /// share the bottom frames of the stack).
    NestedCallback { pc: u64 },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::OutOfBounds { addr, size, write } => write!(f, "out-of-bounds {} of {size} bytes at {addr:#x}", if write { "store" } else { "load" }),
            Fault::Misaligned { addr, size } => write!(f, "misaligned atomic access of {size} bytes at {addr:#x}"),
            Fault::UnknownHelper { id } => write!(f, "callx to unknown helper {id}"),
            Fault::LoopBudget => write!(f, "loop budget exhausted (the program looped longer than its budget allows)"),
            Fault::Helper { id, code } => write!(f, "helper {id} failed with code {code}"),
            Fault::BadCallback { pc } => write!(f, "callback {pc} is not a callback of the program"),
            Fault::NestedCallback { pc } => write!(f, "callback {pc} called from inside a callback"),
        }
    }
}

/// A run that ended with an error, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insn {insn}: {fault}")]
pub struct RunError {
    /// Index of the instruction that faulted.
    pub insn: usize,
    /// What went wrong.
    pub fault: Fault,
}

/// Everything a run needs besides registers: one per [`run`] on the caller's stack, or one kept
/// by a [`Runner`] for many runs.
///
/// The JIT addresses these fields by offset, so the layout is part of the engines' ABI.
#[repr(C)]
pub struct RunState {
    /// Inline-checked regions for loads: `[stack, context, first extra region]` (a region
    /// that is absent or too small to check inline is replaced by the scratch area).
    pub fast_load: [FastRegion; FAST_REGIONS],
    /// Inline-checked regions for stores: as `fast_load`, with read-only ones replaced.
    pub fast_store: [FastRegion; FAST_REGIONS],
    /// Loop budget left (see [`DEFAULT_LOOP_BUDGET`]).
    pub budget: u64,
    /// One of `STATUS_*`.
    pub status: u32,
    fault_insn: u32,
    fault: Option<Fault>,
    stop_value: u64,
    ctx: Region,
    regions: *const Region,
    nregions: usize,
    helpers: *const Option<HelperFn>,
    nhelpers: usize,
    callback: Option<CallbackFn>,
    /// Points at a `*const E` naming the running engine (see `callback_trampoline`).
    callback_engine: *const c_void,
    in_callback: bool,
    stack_base: u64,
    /// Opaque pointer for helpers: the runtime that registered them decides what it points to.
    pub host: *mut c_void,
    scratch: [u8; 8],
    /// A key a helper lends a callback to read (see [`RunState::lend_key`]).
    lent_key: u32,
    /// Memory a helper lets the program read (see [`RunState::lend_memory`]).
    lent_memory: Region,
    /// The access JIT code asks its out-of-line check about: the address, and
    /// `size | write << 8 | fault_tolerant << 9 | pc << 16`. Passed here rather than in registers so that the hot
    /// path around the check keeps its registers where they are.
    pub check_addr: u64,
    /// See `check_addr`.
    pub check_what: u64,
}

/// Offsets of `RunState` fields the JIT reads and writes.
pub mod state_offsets {
    use super::*;
    /// `fast_load[i].start` is at `FAST_LOAD + i * FAST_REGION_SIZE`.
    pub const FAST_LOAD: i32 = std::mem::offset_of!(RunState, fast_load) as i32;
    /// See [`FAST_LOAD`].
    pub const FAST_STORE: i32 = std::mem::offset_of!(RunState, fast_store) as i32;
    /// Size of one [`FastRegion`].
    pub const FAST_REGION_SIZE: i32 = std::mem::size_of::<FastRegion>() as i32;
    /// Offset of `FastRegion::last` inside a region.
    pub const FAST_LAST: i32 = std::mem::offset_of!(FastRegion, last) as i32;
    /// `budget`.
    pub const BUDGET: i32 = std::mem::offset_of!(RunState, budget) as i32;
    /// `status`.
    pub const STATUS: i32 = std::mem::offset_of!(RunState, status) as i32;
    /// `helpers`: pointer to the dense `Option<HelperFn>` array used by `callx`.
    pub const HELPERS: i32 = std::mem::offset_of!(RunState, helpers) as i32;
    /// `nhelpers`: its length.
    pub const NHELPERS: i32 = std::mem::offset_of!(RunState, nhelpers) as i32;
    /// `ctx.start`: the context region's first address.
    pub const CTX_START: i32 = (std::mem::offset_of!(RunState, ctx) + std::mem::offset_of!(Region, start)) as i32;
    /// `ctx.len`.
    pub const CTX_LEN: i32 = (std::mem::offset_of!(RunState, ctx) + std::mem::offset_of!(Region, len)) as i32;
    /// `check_addr`.
    pub const CHECK_ADDR: i32 = std::mem::offset_of!(RunState, check_addr) as i32;
    /// `check_what`.
    pub const CHECK_WHAT: i32 = std::mem::offset_of!(RunState, check_what) as i32;
    /// `ctx.writable` (one byte).
    pub const CTX_WRITABLE: i32 = (std::mem::offset_of!(RunState, ctx) + std::mem::offset_of!(Region, writable)) as i32;
}

/// Extra inputs of a run.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// Memory the program may touch besides its stack and context (map values, ...).
    pub regions: &'a [Region],
    /// Loop budget (see [`DEFAULT_LOOP_BUDGET`]).
    pub budget: u64,
    /// Passed to helpers in [`RunState::host`].
    pub host: *mut c_void,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions { regions: &[], budget: DEFAULT_LOOP_BUDGET, host: std::ptr::null_mut() }
    }
}

/// The context a program receives in r1 (and its length in r2).
#[derive(Debug)]
pub enum Context<'a> {
    /// No context: r1 = r2 = 0.
    None,
    /// Read-write memory (the conformance suite's `mem`).
    Mem(&'a mut [u8]),
    /// Read-only memory (e.g. `struct pt_regs` of a uprobe).
    ReadOnly(&'a [u8]),
}

impl Context<'_> {
    /// The memory the context names, as a region.
    fn region(self) -> Region {
        match self {
            Context::None => Region { start: 0, len: 0, writable: false },
            Context::Mem(m) => Region::of_mut(m),
            Context::ReadOnly(m) => Region::of(m),
        }
    }
}

impl RunState {
    /// A state for a run on the stack at `stack_base`; [`RunState::place_regions`] must follow
    /// once the state is where it will stay (the fast regions may point at its scratch area).
    #[inline(always)]
    fn new(stack_base: u64, ctx: Region, opts: &RunOptions, helpers: &[Option<HelperFn>]) -> Self {
        let stack = FastRegion::new(stack_base, STACK_SIZE as u64);
        RunState {
            fast_load: [stack, FastRegion::default(), FastRegion::default()],
            fast_store: [stack, FastRegion::default(), FastRegion::default()],
            budget: opts.budget,
            status: STATUS_RUNNING,
            fault_insn: 0,
            fault: None,
            stop_value: 0,
            ctx,
            regions: opts.regions.as_ptr(),
            nregions: opts.regions.len(),
            helpers: helpers.as_ptr(),
            nhelpers: helpers.len(),
            callback: None,
            callback_engine: std::ptr::null(),
            in_callback: false,
            stack_base,
            host: opts.host,
            scratch: [0; 8],
            lent_key: 0,
            lent_memory: Region { start: 0, len: 0, writable: false },
            check_addr: 0,
            check_what: 0,
        }
    }

    /// Sets the inline-checked context and extra regions. A region too small to check inline
    /// (the real one is then checked on the slow path), and the store side of a read-only one,
    /// point at the state's own scratch area instead.
    #[inline(always)]
    fn place_regions(&mut self) {
        let scratch = FastRegion::new(self.scratch.as_ptr() as u64, 8);
        let fast = |r: Option<Region>, store: bool| match r {
            Some(r) if r.len >= 8 && (r.writable || !store) => FastRegion::new(r.start, r.len),
            _ => scratch,
        };
        let extra = self.extra_regions().first().copied();
        self.fast_load[1] = fast(Some(self.ctx), false);
        self.fast_store[1] = fast(Some(self.ctx), true);
        self.fast_load[2] = fast(extra, false);
        self.fast_store[2] = fast(extra, true);
    }

    /// Whether an access is inside a region the program may touch (what both engines check).
    #[inline]
    pub fn access_ok(&self, addr: u64, size: MemSize, write: bool) -> bool {
        let fast = if write { &self.fast_store } else { &self.fast_load };
        fast.iter().any(|r| r.contains(addr, size)) || self.slow_access_ok(addr, size.bytes() as u64, write)
    }

    #[cold]
    fn slow_access_ok(&self, addr: u64, size: u64, write: bool) -> bool {
        if self.ctx.contains(addr, size) && (self.ctx.writable || !write) {
            return true;
        }
        self.extra_regions().iter().any(|r| r.contains(addr, size) && (r.writable || !write))
            || (!write && (self.lent_key_region().contains(addr, size) || self.lent_memory.contains(addr, size)))
    }

    fn lent_key_region(&self) -> Region {
        Region { start: &self.lent_key as *const u32 as u64, len: 4, writable: false }
    }

    /// Puts `key` where the program may read it but not write it, for a helper that hands a
    /// callback a key that lives nowhere in memory (`bpf_for_each_map_elem` over an array,
    /// whose kernel version passes the address of an index on its own stack); its address.
    /// The next call overwrites it.
    pub fn lend_key(&mut self, key: u32) -> u64 {
        self.lent_key = key;
        self.lent_key_region().start
    }

    /// Lets the program read (not write) `[start, start + len)` for the rest of the run, as
    /// the kernel lets a program read through the BTF-typed pointers some helpers return
    /// (`bpf_get_current_task_btf`). The helper must keep the memory alive and readable that
    /// long; the next call replaces it.
    pub fn lend_memory(&mut self, start: u64, len: u64) {
        self.lent_memory = Region { start, len, writable: false };
    }

    /// Whether `[addr, addr + len)` lies in one region the program may touch, for helpers
    /// that take pointers.
    pub fn range_ok(&self, addr: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        let stack = Region { start: self.fast_load[0].start, len: STACK_SIZE as u64, writable: true };
        [stack, self.ctx, self.lent_key_region(), self.lent_memory].iter().chain(self.extra_regions()).any(|r| r.contains(addr, len) && (r.writable || !write))
    }

    /// The bytes at `[addr, addr + len)` if a program may read them.
    #[inline]
    pub fn slice(&self, addr: u64, len: u64) -> Option<&[u8]> {
        // Helpers' keys and values are most often on the program's stack: checked here first.
        let on_stack = Region { start: self.fast_load[0].start, len: STACK_SIZE as u64, writable: true };
        if len != 0 && on_stack.contains(addr, len) {
            // SAFETY: inside the run's stack, valid for reads for the duration of the run.
            return Some(unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) });
        }
        self.slice_elsewhere(addr, len)
    }

    /// [`RunState::slice`] past the stack.
    #[inline(never)]
    fn slice_elsewhere(&self, addr: u64, len: u64) -> Option<&[u8]> {
        if !self.range_ok(addr, len, false) {
            return None;
        }
        if len == 0 {
            return Some(&[]);
        }
        // SAFETY: range_ok checked that the range lies inside one region, and every region
        // (stack, context, extra) is valid for reads for the duration of the run.
        Some(unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) })
    }

    /// The bytes at `[addr, addr + len)` if a program may write them.
    pub fn slice_mut(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        if !self.range_ok(addr, len, true) {
            return None;
        }
        if len == 0 {
            return Some(&mut []);
        }
        // SAFETY: range_ok checked that the range lies inside one writable region, valid for
        // writes during the run; the program is suspended while the helper holds the slice.
        Some(unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) })
    }

    fn extra_regions(&self) -> &[Region] {
        if self.nregions == 0 {
            return &[];
        }
        // SAFETY: regions/nregions come from the `RunOptions::regions` slice, which outlives
        // the run that owns this state.
        unsafe { std::slice::from_raw_parts(self.regions, self.nregions) }
    }

    /// The helper with id `id`, for `callx`.
    pub fn helper(&self, id: u64) -> Option<HelperFn> {
        if id >= self.nhelpers as u64 {
            return None;
        }
        // SAFETY: helpers/nhelpers come from the program's helper table, alive for the run.
        unsafe { *self.helpers.add(id as usize) }
    }

    /// The context region of this run (r1 and r2 at entry).
    pub fn context_region(&self) -> Region {
        self.ctx
    }

    /// Calls the program's callback starting at slot `pc` (a function whose address the
    /// program passed to a helper) with r1-r5 = `args`. Returns None if this state belongs to
    /// no run. A `pc` that starts no callback, or a call from inside a callback, faults the run
    /// and returns 0. The callback gets the frames at the bottom of the stack (the verifier
    /// keeps the program's deepest call chain and its callbacks' chains within the stack
    /// together).
    pub fn call_function(&mut self, pc: usize, args: [u64; 5]) -> Option<u64> {
        let f = self.callback?;
        if self.in_callback {
            self.helper_fault(Fault::NestedCallback { pc: pc as u64 });
            return Some(0);
        }
        self.in_callback = true;
        let r = f(self.callback_engine, self, pc, args);
        self.in_callback = false;
        Some(r)
    }

    /// The frame pointer a callback of call-chain depth `depth` runs with.
    pub fn callback_frame_pointer(&self, depth: usize) -> u64 {
        self.stack_base + (FRAME_SIZE * depth.clamp(1, MAX_CALL_DEPTH)) as u64
    }

    /// Ends the program at once with `r0 = value` (for helpers such as an unwind or a tail call).
    pub fn stop(&mut self, value: u64) {
        if self.status == STATUS_RUNNING {
            self.status = STATUS_STOPPED;
            self.stop_value = value;
        }
    }

    /// Ends the program with an error at instruction `insn`.
    pub fn fault(&mut self, insn: usize, fault: Fault) {
        if self.status != STATUS_FAULT {
            self.status = STATUS_FAULT;
            self.fault = Some(fault);
            self.fault_insn = insn as u32;
        }
    }

    /// Takes `cost` from the loop budget (for a callback a helper runs: its function's
    /// length); when the budget cannot pay, faults the run with [`Fault::LoopBudget`] and
    /// returns false.
    pub fn charge(&mut self, cost: u64) -> bool {
        if self.budget < cost {
            self.budget = 0;
            self.helper_fault(Fault::LoopBudget);
            return false;
        }
        self.budget -= cost;
        true
    }

    /// Records a fault at the instruction a helper was called from (fixed up by the engine).
    pub fn helper_fault(&mut self, fault: Fault) {
        self.fault(u32::MAX as usize, fault);
    }

    /// Sets the instruction index of a fault a helper raised without knowing it.
    pub fn locate_fault(&mut self, insn: usize) {
        if self.status == STATUS_FAULT && self.fault_insn == u32::MAX {
            self.fault_insn = insn as u32;
        }
    }

    #[inline(always)]
    fn finish(&self, r0: u64) -> Result<u64, RunError> {
        match self.status {
            STATUS_RUNNING => Ok(r0),
            STATUS_STOPPED => Ok(self.stop_value),
            _ => Err(RunError { insn: self.fault_insn as usize, fault: self.fault.unwrap_or(Fault::LoopBudget) }),
        }
    }
}

/// Machine code's entry point: `(state, frame pointer, r1, r2, r3, r4, r5) -> r0`.
///
/// Calling one is what [`Engine::execute`] does for a compiled engine: the caller must pass a
/// `RunState` set up for a run of the engine that returned it (regions, helpers, callbacks),
/// and the top of a `STACK_SIZE`-byte stack as the frame pointer.
pub type NativeEntry = unsafe extern "C" fn(*mut RunState, u64, u64, u64, u64, u64, u64) -> u64;

/// An engine that can run a verified program: the interpreter or a JIT-compiled function.
pub trait Engine {
    /// The machine code `execute` would call, for callers that keep it to skip a dynamic
    /// dispatch per run ([`Runner`]). Returning it promises the contract of [`NativeEntry`].
    fn native_entry(&self) -> Option<NativeEntry> {
        None
    }

    /// Runs the entry function with r1, r2 and the frame pointer set; returns r0. Errors and
    /// early stops are reported through `state`.
    fn execute(&self, r1: u64, r2: u64, frame_pointer: u64, state: &mut RunState) -> u64;

    /// The helper functions the program was verified against.
    fn helper_functions(&self) -> &[Option<HelperFn>];

    /// Runs the callback starting at slot `pc` with r1-r5 = `args`, or None if no callback of
    /// the program starts there.
    fn call_function(&self, state: &mut RunState, pc: usize, args: [u64; 5]) -> Option<u64>;

    /// The machine code of each function, entry first, as far as it is known (for
    /// inspection); none for an interpreter.
    fn machine_code(&self) -> Vec<&[u8]> {
        Vec::new()
    }
}

fn callback_trampoline<E: Engine + ?Sized>(engine: *const c_void, state: &mut RunState, pc: usize, args: [u64; 5]) -> u64 {
    // SAFETY: `run` and `Runner` point `callback_engine` at a `*const E` naming the engine of
    // the current run, both alive while it runs, and only that run calls back.
    let engine: &E = unsafe { &**(engine as *const *const E) };
    engine.call_function(state, pc, args).unwrap_or_else(|| {
        state.helper_fault(Fault::BadCallback { pc: pc as u64 });
        0
    })
}

/// The memory of one run's stack frames.
#[repr(C, align(16))]
pub struct Stack([u8; STACK_SIZE]);

/// This thread's reusable stacks for [`run`]: one per level of nesting (a tail call runs
/// inside its caller's run) seen on this thread.
type StackPool = Vec<Box<Stack>>;

bpftime_tls::initial_exec! {
    /// The pool, made on first use and freed at thread exit by `STACKS_EXIT` (no TLS
    /// destructor: see `thread_exit`).
    static STACKS: Cell<*mut StackPool> as "bpftime_vm_stacks";
}

unsafe extern "C" fn free_stacks(pool: *mut c_void) {
    STACKS.set(std::ptr::null_mut());
    // SAFETY: `pool` is the Box::into_raw'd pool this thread registered, freed only here.
    crate::thread_exit::as_own_work(|| drop(unsafe { Box::from_raw(pool as *mut StackPool) }));
}

static STACKS_EXIT: crate::thread_exit::ThreadExitKey = crate::thread_exit::ThreadExitKey::new(free_stacks);

/// Takes a stack from this thread's pool, or makes a zeroed one.
fn take_stack() -> Box<Stack> {
    let pool = STACKS.get();
    // SAFETY: the pool belongs to this thread and no reference to it outlives this call.
    let pooled = (!pool.is_null()).then(|| unsafe { (*pool).pop() }).flatten();
    pooled.unwrap_or_else(|| Box::new(Stack([0; STACK_SIZE])))
}

/// Gives a stack back to this thread's pool (dropped if the thread is exiting).
fn return_stack(stack: Box<Stack>) {
    let mut pool = STACKS.get();
    if pool.is_null() {
        pool = Box::into_raw(Box::new(StackPool::new()));
        // SAFETY: a fresh pool, freed only by `free_stacks` at this thread's exit.
        if !unsafe { STACKS_EXIT.register(pool as *mut c_void) } {
            // SAFETY: just made, not shared.
            drop(unsafe { Box::from_raw(pool) });
            return;
        }
        STACKS.set(pool);
    }
    // SAFETY: the pool belongs to this thread and no other reference to it is live.
    unsafe { (*pool).push(stack) };
}

/// Runs `engine` on `ctx`: sets up stack and state, runs, and reports the result.
///
/// The stack is one of this thread's reusable stacks, zeroed when first made: helpers read it
/// from Rust (map keys, buffers) and the verifier does not prove that programs write what they
/// pass, so it must always be initialised memory.
#[inline]
pub fn run<E: Engine + ?Sized>(engine: &E, ctx: Context<'_>, opts: &RunOptions) -> Result<u64, RunError> {
    let region = ctx.region();
    let mut stack = take_stack();
    let base = stack.0.as_mut_ptr() as u64;
    let mut state = RunState::new(base, region, opts, engine.helper_functions());
    state.place_regions();
    let engine_ptr: *const E = engine;
    state.callback = Some(callback_trampoline::<E>);
    state.callback_engine = &engine_ptr as *const *const E as *const c_void;
    let r0 = engine.execute(region.start, region.len, base + STACK_SIZE as u64, &mut state);
    return_stack(stack);
    state.finish(r0)
}

/// A run context kept for many short runs on one thread (probe hits): its stack and state are
/// set up once, and the engine-specific parts (helpers, machine code) only change when the
/// engine does, so a run fills in the context, the helper host and a few counters.
pub struct Runner {
    inner: Box<RunnerInner>,
    budget: u64,
}

/// The engines a [`Runner`] runs.
pub type SharedEngine = Arc<dyn Engine + Send + Sync>;

#[repr(C)]
struct RunnerInner {
    state: RunState,
    /// The engine of the last run: what `state.callback_engine` points at.
    engine_ptr: *const dyn Engine,
    /// Its machine code, if it has any.
    native: Option<NativeEntry>,
    /// Every engine this runner has run, kept alive (so an address always names the same
    /// engine) with what a run needs of it, so switching engines (an entry and a return probe
    /// on one function) costs no reference counting.
    known: Vec<KnownEngine>,
    stack: Stack,
}

struct KnownEngine {
    /// The engine's address: what a run's engine is compared with.
    ptr: *const dyn Engine,
    helpers: *const Option<HelperFn>,
    nhelpers: usize,
    native: Option<NativeEntry>,
    /// Keeps `ptr` alive (and naming this engine).
    _engine: SharedEngine,
}

impl RunnerInner {
    /// Makes `engine` the current one. Probes on one function (an entry and a return
    /// program) alternate between engines on every call: a known engine is a short scan.
    #[inline]
    fn switch_to(&mut self, engine: &SharedEngine) {
        let ptr = Arc::as_ptr(engine);
        let i = match self.known.iter().position(|k| std::ptr::addr_eq(k.ptr, ptr)) {
            Some(i) => i,
            None => self.learn(engine),
        };
        let k = &self.known[i];
        self.state.helpers = k.helpers;
        self.state.nhelpers = k.nhelpers;
        self.native = k.native;
        self.engine_ptr = k.ptr;
    }

    /// Adds an engine this runner has not run yet.
    #[cold]
    #[inline(never)]
    fn learn(&mut self, engine: &SharedEngine) -> usize {
        let helpers = engine.helper_functions();
        self.known.push(KnownEngine {
            ptr: Arc::as_ptr(engine) as *const dyn Engine,
            helpers: helpers.as_ptr(),
            nhelpers: helpers.len(),
            native: engine.native_entry(),
            _engine: engine.clone(),
        });
        self.known.len() - 1
    }
}

impl Runner {
    /// A runner whose programs may also touch `regions`, which must outlive every run (a
    /// runtime keeps them for the life of the process).
    pub fn new(regions: &'static [Region], budget: u64) -> Runner {
        let opts = RunOptions { regions, budget, host: std::ptr::null_mut() };
        let no_ctx = Region { start: 0, len: 0, writable: false };
        let mut inner = Box::new(RunnerInner {
            state: RunState::new(0, no_ctx, &opts, &[]),
            engine_ptr: std::ptr::null::<crate::Interpreter>(),
            native: None,
            known: Vec::new(),
            stack: Stack([0; STACK_SIZE]),
        });
        // The box does not move: the state can now point into it.
        let base = inner.stack.0.as_ptr() as u64;
        inner.state = RunState::new(base, no_ctx, &opts, &[]);
        inner.state.place_regions();
        inner.state.callback = Some(callback_trampoline::<dyn Engine>);
        inner.state.callback_engine = &inner.engine_ptr as *const *const dyn Engine as *const c_void;
        Runner { inner, budget }
    }

    /// Runs `engine` on a read-only context (such as a probe's `pt_regs`).
    #[inline]
    pub fn run_read_only(&mut self, engine: &SharedEngine, ctx: &[u8], host: *mut c_void) -> Result<u64, RunError> {
        self.run_on(engine, Region::of(ctx), host)
    }

    /// Runs `engine` on `ctx` (what [`run`] does, without setting up a state and a stack for
    /// each run).
    #[inline]
    pub fn run(&mut self, engine: &SharedEngine, ctx: Context<'_>, host: *mut c_void) -> Result<u64, RunError> {
        self.run_on(engine, ctx.region(), host)
    }

    #[inline]
    fn run_on(&mut self, engine: &SharedEngine, ctx: Region, host: *mut c_void) -> Result<u64, RunError> {
        let inner = &mut *self.inner;
        if !std::ptr::addr_eq(inner.engine_ptr, Arc::as_ptr(engine)) {
            inner.switch_to(engine);
        }
        // Stores are what a probe hit is short of: write only the fields that differ from the
        // last run (usually the context's address and nothing else).
        let st = &mut inner.state;
        let (start, len) = (ctx.start, ctx.len);
        if st.ctx.len == len && st.ctx.writable == ctx.writable {
            st.ctx.start = start;
            if len >= 8 {
                st.fast_load[1].start = start;
                if ctx.writable {
                    st.fast_store[1].start = start;
                }
            }
        } else {
            st.ctx = ctx;
            st.place_regions();
        }
        if st.status != STATUS_RUNNING {
            st.status = STATUS_RUNNING;
        }
        if st.budget != self.budget {
            st.budget = self.budget;
        }
        if st.fault.is_some() {
            st.fault = None;
        }
        if st.lent_memory.len != 0 {
            st.lent_memory.len = 0;
        }
        if st.host != host {
            st.host = host;
        }
        let fp = inner.stack.0.as_ptr() as u64 + STACK_SIZE as u64;
        let r0 = match inner.native {
            // SAFETY: the entry belongs to `engine` (cached with it above), whose helpers and
            // callback the state now holds; `fp` is the top of this runner's stack.
            Some(entry) => unsafe { entry(st, fp, start, len, 0, 0, 0) },
            None => engine.execute(start, len, fp, st),
        };
        st.finish(r0)
    }
}
