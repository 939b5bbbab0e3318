//! The load-time range analysis: which memory accesses are in bounds on every run.
//!
//! An abstract interpretation of each function over its control-flow graph. Every register
//! (and every 8-byte stack slot a register is spilled to) holds an abstract [`Val`]: what it
//! points into (the stack frame, the context, memory of known size that a helper or an `lddw`
//! produced, a map reference) and a signed [`Range`] of its offset there, or, for a plain
//! number, of its value. States are joined where control flow merges and widened at the
//! targets of backward jumps, so loops reach a fixpoint. Conditional jumps refine ranges on
//! each edge (`if i < 1024`), and null checks turn "memory or null" into memory, for every
//! copy of the pointer.
//!
//! The result, per load, store and atomic: proven in bounds or not, and which region it most
//! likely touches (the JIT orders its run-time checks by that). Context proofs hold only for
//! runs whose context is at least [`ContextNeeds::len`] bytes (writable if
//! [`ContextNeeds::writable`]) and whose r1 is its start: the engines check that once per run
//! and otherwise check every access.
//!
//! Soundness over precision: anything the analysis does not model (values loaded from memory,
//! pointer arithmetic other than adding a number, helpers that may write the stack) becomes
//! "unknown", whose accesses keep their run-time check.

use crate::exec::{HelperReturn, HelperTable, FRAME_SIZE};
use crate::insn::{AluOp, AtomicOp, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, Reg, Width};
use crate::program::Function;
use crate::range::Range;
use std::collections::{BTreeSet, HashMap};

/// Context accesses are proven only below this offset: a program reaching further keeps its
/// checks rather than demanding a huge context of every run.
pub const CTX_PROOF_LIMIT: i64 = 1 << 16;

/// What an `lddw` that names a map gives the program, as far as the analysis is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pointee {
    /// A map reference whose lookups return values of `value_size` bytes, or a map without
    /// keys (`key_size` 0: a queue, stack or bloom filter), on which the verifier refuses
    /// lookups (maps whose lookup returns something else, such as an inner map, are not
    /// described).
    Map {
        /// Bytes of one value.
        value_size: u32,
        /// Bytes of one key (what the map helpers read through their key pointer).
        key_size: u32,
        /// For an array map: where its values are, so that lookups can be inlined.
        array: Option<ArrayLayout>,
    },
    /// The address of byte `offset` of a `size`-byte map value (`.data`, `.bss`, `.rodata`).
    Value {
        /// Bytes of the value.
        size: u32,
        /// Offset of the address inside it.
        offset: u32,
    },
}

/// Where an array map's values are: a lookup of key `k` (a `u32` the key pointer points to)
/// returns `values + k * stride` (plus `cpu() * cpu_stride` for a per-CPU array) when
/// `k < max_entries`, and null otherwise. A resolver that describes a map with one promises
/// exactly that of its lookup helper, for the life of the program. The verifier reads only
/// `max_entries`; an engine whose addresses are known only at run time (the GPU's) has its
/// resolver put there what it needs instead (the map's handle in `values`, 1 in `cpu` for a
/// slot per SM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayLayout {
    /// Address of value 0.
    pub values: u64,
    /// Bytes from one value to the next.
    pub stride: u64,
    /// Number of values.
    pub max_entries: u32,
    /// Per-CPU arrays: the address of an `extern "C" fn() -> u64` giving the calling thread's
    /// CPU, as the lookup helper picks it; 0 for a plain array. It must give the same CPU for
    /// the whole of a run (the JIT asks once per function).
    pub cpu: u64,
    /// Per-CPU arrays: bytes from one CPU's copy of a value to the next.
    pub cpu_stride: u64,
}

/// The region an access goes to, as far as the verifier knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// The current function's stack frame.
    Stack,
    /// The context the program was given in r1.
    Context,
    /// Memory a helper or an `lddw` returned: a map value, a ring-buffer record.
    Memory,
    /// Anything.
    #[default]
    Unknown,
}

/// What the verifier established about one load, store or atomic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The region it most likely touches.
    pub target: Target,
    /// Whether it is in bounds on every run (subject to [`ContextNeeds`] for the context).
    pub proven: bool,
    /// Whether its offset from its region's start (the frame's top for the stack) is the same
    /// on every run and a multiple of its size: the address is aligned wherever that start is
    /// aligned to 8.
    pub aligned: bool,
    /// A load through a BTF-typed pointer (see [`HelperReturn::BtfObject`]): where its check
    /// fails it reads 0 and the run goes on, as the kernel's `PROBE_MEM` loads.
    pub probe: bool,
}

/// What a run's context must be for the context proofs to hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextNeeds {
    /// Bytes the proven accesses reach (0 if none).
    pub len: u64,
    /// Whether a proven access writes it.
    pub writable: bool,
}

impl ContextNeeds {
    /// Whether a run whose r1 is `r1` and whose context region is `ctx` meets them.
    #[inline]
    pub fn met(&self, r1: u64, ctx: &crate::exec::Region) -> bool {
        self.len == 0 || (r1 == ctx.start && ctx.len >= self.len && (ctx.writable || !self.writable))
    }
}

/// What a register or stack slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    /// A number (or a pointer of unknown kind); `off` is its value.
    Scalar,
    /// The current frame's r10 plus `off`.
    Stack,
    /// The context plus `off`.
    Ctx,
    /// `size` bytes of memory plus `off`.
    Mem { size: u32 },
    /// As `Mem` at offset 0, or null. Every value with one `id` is the same pointer.
    MemOrNull { size: u32, id: u32 },
    /// The map whose reference (the `lddw`'s resolved value) is `handle`.
    Map { value_size: u32, key_size: u32, handle: u64 },
    /// A BTF-typed kernel object (or null), or a 64-bit value loaded from one (which may be a
    /// pointer to another, `task->real_parent`): loads through it are fault-tolerant.
    Btf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    base: Base,
    off: Range,
}

impl Val {
    const TOP: Val = Val { base: Base::Scalar, off: Range::TOP };

    fn scalar(off: Range) -> Val {
        Val { base: Base::Scalar, off }
    }

    fn join(self, o: Val) -> Val {
        let null = |v: Val| v.base == Base::Scalar && v.off.singleton() == Some(0);
        if self.base == o.base {
            Val { base: self.base, off: self.off.join(o.off) }
        } else if self.base == Base::Btf && null(o) {
            // A BTF pointer may be null already (`p = NULL; if (c) p = t->real_parent;`).
            self
        } else if o.base == Base::Btf && null(self) {
            o
        } else {
            Val::TOP
        }
    }

    fn widen(old: Val, new: Val, thresholds: &[i64]) -> Val {
        if old.base == new.base {
            Val { base: old.base, off: Range::widen(old.off, new.off, thresholds) }
        } else if new.base == Base::Btf && old.join(new) == new {
            // A null that became a BTF pointer (see `join`).
            new
        } else {
            Val::TOP
        }
    }

    fn as_scalar(self) -> Option<Range> {
        (self.base == Base::Scalar).then_some(self.off)
    }

    /// The value as a callee sees it: a stack pointer is relative to the callee's frame
    /// pointer, one frame (512 bytes) below the caller's.
    fn up_one_frame(self) -> Val {
        match self.base {
            Base::Stack => Val { base: Base::Stack, off: self.off.plus(Range::exact(FRAME_SIZE as i64)) },
            _ => self,
        }
    }
}

/// Abstract state at one program point.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    /// r0-r10.
    regs: [Val; 11],
    /// Spilled 64-bit values by frame offset (a multiple of 8 in `-512..0`), sorted; a slot
    /// not listed holds an unknown number.
    slots: Vec<(i64, Val)>,
    /// Constant 32-bit words stored in the frame, by offset (a multiple of 4), sorted: the
    /// `u32 key = 2` a map lookup is given.
    words: Vec<(i64, u32)>,
}

impl State {
    /// A function's first instruction with r1-r5 = `args`.
    fn entry(args: [Val; 5]) -> State {
        let mut regs = [Val::TOP; 11];
        regs[1..6].copy_from_slice(&args);
        regs[10] = Val { base: Base::Stack, off: Range::exact(0) };
        State { regs, slots: Vec::new(), words: Vec::new() }
    }

    /// The join of two states, widened against `self` with `widen`'s thresholds if given.
    fn merge(&self, o: &State, widen: Option<&[i64]>) -> State {
        let mut regs = self.regs;
        for (r, o) in regs.iter_mut().zip(o.regs) {
            *r = match widen {
                Some(t) => Val::widen(*r, r.join(o), t),
                None => r.join(o),
            };
        }
        let slots = self
            .slots
            .iter()
            .filter_map(|&(k, v)| {
                let (_, w) = o.slots.iter().find(|(j, _)| *j == k)?;
                let m = match widen {
                    Some(t) => Val::widen(v, v.join(*w), t),
                    None => v.join(*w),
                };
                (m != Val::TOP).then_some((k, m))
            })
            .collect();
        // Words: those both states hold, with the same value.
        let words = self.words.iter().filter(|w| o.words.contains(w)).copied().collect();
        State { regs, slots, words }
    }

    fn slot(&self, k: i64) -> Val {
        self.slots.iter().find(|(j, _)| *j == k).map_or(Val::TOP, |(_, v)| *v)
    }

    /// Forgets the slots and words overlapping bytes `lo..hi` of the frame.
    fn clobber(&mut self, lo: i128, hi: i128) {
        self.slots.retain(|&(k, _)| (k as i128 + 8) <= lo || k as i128 >= hi);
        self.words.retain(|&(k, _)| (k as i128 + 4) <= lo || k as i128 >= hi);
    }

    /// Forgets everything known of the frame's contents.
    fn forget_frame(&mut self) {
        self.slots.clear();
        self.words.clear();
    }

    /// The constant word at frame offset `k`, if known.
    fn word(&self, k: i64) -> Option<u32> {
        self.words.iter().find(|(j, _)| *j == k).map(|&(_, w)| w)
    }

    /// Records that bytes `k..k + 4` of the frame hold `w` (after `clobber`ing them).
    fn set_word(&mut self, k: i64, w: u32) {
        let at = self.words.partition_point(|(j, _)| *j < k);
        self.words.insert(at, (k, w));
    }

    fn set_slot(&mut self, k: i64, v: Val) {
        self.clobber(k as i128, k as i128 + 8);
        if v != Val::TOP {
            let at = self.slots.partition_point(|(j, _)| *j < k);
            self.slots.insert(at, (k, v));
        }
    }

    /// Applies `f` to every register and slot value.
    fn map_vals(&mut self, f: impl Fn(Val) -> Val) {
        for r in self.regs.iter_mut() {
            *r = f(*r);
        }
        for (_, v) in self.slots.iter_mut() {
            *v = f(*v);
        }
        self.slots.retain(|(_, v)| *v != Val::TOP);
    }
}

/// The analysis of a whole program.
pub(crate) struct Analysis {
    pub access: Vec<Access>,
    pub ctx: ContextNeeds,
    /// Map lookups (by slot) an engine may inline: the map is an array known at load time and
    /// the key's 4 bytes are proven readable.
    pub inline_lookups: HashMap<usize, ArrayLayout>,
    /// Of those, the lookups whose key is a constant (stored on the stack before the call on
    /// every path to it): the value's address is then known at load time.
    pub lookup_keys: HashMap<usize, u32>,
    /// Engines may check a walked loop's accesses once on entry (see [`crate::walks`]) rather
    /// than on every iteration; false when every check is kept.
    pub walk_checks_on_entry: bool,
    /// Per slot: whether some run may execute it. False only where the analysis of its
    /// function completed and no path it followed leads there (code behind a branch on a
    /// constant, as libbpf leaves behind `bpf_core_field_exists` and the like).
    pub reachable: Vec<bool>,
    /// Per slot: whether `reachable` was found (false where the analysis of its function did
    /// not complete and `reachable` only says "maybe").
    pub reach_known: Vec<bool>,
    /// See [`crate::Program::context_reads`].
    pub ctx_reads: Option<Vec<(u32, u32)>>,
    /// See [`crate::Program::helper_args`].
    pub helper_args: HashMap<usize, HelperArgs>,
    /// Calls of a helper that takes a key (map lookup, update, delete) on a map without keys
    /// (key size 0: a queue, stack or bloom filter), by slot, with the helper's id.
    pub keyless_map_calls: Vec<(usize, u32)>,
}

/// Helpers whose second argument is a key of the map in the first: `map_lookup_elem`,
/// `map_update_elem`, `map_delete_elem`, `map_lookup_percpu_elem`.
const TAKE_KEYS: [u32; 4] = [1, 2, 3, 195];

/// What the verifier proved of the pointers a helper call passes, readable on every run (on
/// the stack or in memory of known size, never null): with a map in r1, that r2 points to a
/// whole key and r3 to a whole value; and for any helper, which arguments point to as many
/// bytes as the argument after them says at most (a buffer and its size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelperArgs {
    /// r2 points to `key_size` readable bytes (a map in r1).
    pub key: bool,
    /// r3 points to `value_size` readable bytes (a map in r1).
    pub value: bool,
    /// Bit `i` (0-3): r`i+1` points to at least as many readable bytes as r`i+2` can hold (a
    /// number the verifier bounds).
    pub sized: u8,
}

impl HelperArgs {
    /// Whether r`n` (1-4) is proven to point to r`n+1` bytes.
    pub fn sized(&self, n: u32) -> bool {
        (1..=4).contains(&n) && self.sized & 1 << (n - 1) != 0
    }
}

/// Analyses every function of a program whose control flow the verifier has checked.
/// `pointees` describes the `lddw`s (by slot) that name maps; `resolved` lists (sorted) every
/// `lddw` a resolver gave its constant: those without a pointee are unknown values, since
/// their constants (map references, addresses) belong to one process, not to the program.
pub(crate) fn analyze(insns: &[Insn], functions: &[Function], helpers: &HelperTable, pointees: &HashMap<usize, Pointee>, resolved: &[usize]) -> Analysis {
    let index_of = |pc: usize| functions.binary_search_by(|f| f.start.cmp(&pc)).ok();
    // Local calls: (call site, caller, callee). The verifier rejected recursion: the call graph
    // is acyclic, and callers are analysed before their callees.
    let calls: Vec<(usize, usize, usize)> = functions
        .iter()
        .enumerate()
        .flat_map(|(fi, f)| {
            (f.start..f.end).filter_map(move |pc| match insns[pc] {
                Insn::Call(CallTarget::Local(off)) => Some((pc, fi, (pc as i64 + 1 + off as i64) as usize)),
                _ => None,
            })
        })
        .filter_map(|(pc, caller, target)| Some((pc, caller, index_of(target)?)))
        .collect();
    let mut waiting: Vec<usize> = vec![0; functions.len()];
    for &(_, _, callee) in &calls {
        waiting[callee] += 1;
    }
    let mut order: Vec<usize> = (0..functions.len()).filter(|&f| waiting[f] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let f = order[next];
        next += 1;
        for &(_, caller, callee) in &calls {
            if caller == f {
                waiting[callee] -= 1;
                if waiting[callee] == 0 {
                    order.push(callee);
                }
            }
        }
    }
    let mut a = Analyzer {
        insns,
        helpers,
        pointees,
        resolved,
        access: vec![Access::default(); insns.len()],
        ctx_end: vec![0; insns.len()],
        ctx_start: vec![0; insns.len()],
        ctx_escapes: vec![false; insns.len()],
        helper_args: HashMap::new(),
        keyless_map_calls: vec![],
        inline_lookups: HashMap::new(),
        lookup_keys: HashMap::new(),
        call_args: HashMap::new(),
        frames_above: 0,
        reached: vec![false; insns.len()],
    };
    // Per function: whether its analysis completed, and how many frames are above its own on
    // every path to it (the frames a stack pointer it was given may point into).
    let mut complete = vec![false; functions.len()];
    let mut above = vec![0usize; functions.len()];
    let mut reach_known = vec![true; insns.len()];
    for &fi in &order {
        let f = &functions[fi];
        let sites: Vec<&(usize, usize, usize)> = calls.iter().filter(|c| c.2 == fi).collect();
        // The entry gets the context in r1 (unless a callback calls it too); a callback
        // (helpers call it) or a function whose callers were not all analysed gets unknown
        // arguments; any other the join of what its callers pass, their stack pointers one
        // frame further up.
        let args = if f.callback || (fi == 0 && !sites.is_empty()) {
            [Val::TOP; 5]
        } else if fi == 0 {
            let mut args = [Val::TOP; 5];
            args[0] = Val { base: Base::Ctx, off: Range::exact(0) };
            args
        } else if sites.is_empty() || sites.iter().any(|c| !complete[c.1]) {
            [Val::TOP; 5]
        } else {
            above[fi] = sites.iter().map(|c| above[c.1] + 1).min().expect("has callers");
            let passed = |c: &(usize, usize, usize)| a.call_args.get(&c.0).copied().unwrap_or([Val::TOP; 5]).map(|v| v.up_one_frame());
            sites[1..].iter().fold(passed(sites[0]), |acc, c| {
                let p = passed(c);
                std::array::from_fn(|i| acc[i].join(p[i]))
            })
        };
        a.frames_above = if f.callback { 0 } else { above[fi] };
        complete[fi] = a.function(f, args);
        if !complete[fi] {
            // Too costly to analyse: keep every check in it.
            reach_known[f.start..f.end].fill(false);
            for pc in f.start..f.end {
                a.reached[pc] = true;
                a.access[pc] = Access::default();
                a.ctx_end[pc] = 0;
                a.inline_lookups.remove(&pc);
                a.lookup_keys.remove(&pc);
                a.helper_args.remove(&pc);
            }
        }
    }
    for (fi, f) in functions.iter().enumerate() {
        if !order.contains(&fi) {
            // Not reached by the order (cannot happen for a verified program): nothing proven.
            reach_known[f.start..f.end].fill(false);
            for pc in f.start..f.end {
                a.reached[pc] = true;
                a.access[pc] = Access::default();
                a.ctx_end[pc] = 0;
                a.inline_lookups.remove(&pc);
                a.lookup_keys.remove(&pc);
                a.helper_args.remove(&pc);
            }
        }
    }
    let mut ctx = ContextNeeds::default();
    for (pc, &end) in a.ctx_end.iter().enumerate() {
        if end > 0 && a.access[pc].proven {
            ctx.len = ctx.len.max(end as u64);
            ctx.writable |= matches!(insns[pc], Insn::Store { .. } | Insn::Atomic { .. });
        }
    }
    // A function not analysed to the end may hand the context anywhere.
    let ctx_reads = context_reads(insns, &a).filter(|_| order.iter().all(|&fi| complete[fi]) && order.len() == functions.len());
    let helper_args = std::mem::take(&mut a.helper_args).into_iter().collect();
    let inline_lookups: HashMap<usize, ArrayLayout> = a.inline_lookups.into_iter().filter_map(|(pc, l)| Some((pc, l?))).collect();
    let lookup_keys = a.lookup_keys.into_iter().filter(|(pc, _)| inline_lookups.contains_key(pc)).collect();
    let mut keyless_map_calls = a.keyless_map_calls;
    keyless_map_calls.sort_unstable();
    keyless_map_calls.dedup();
    Analysis {
        access: a.access,
        ctx,
        inline_lookups,
        lookup_keys,
        walk_checks_on_entry: true,
        reachable: a.reached,
        reach_known,
        ctx_reads,
        helper_args,
        keyless_map_calls,
    }
}

/// The context bytes a program reads, as sorted, disjoint `[start, end)` spans, when every
/// access it may execute is proven (so none lands in the context by accident), none of them
/// writes the context, and no helper is handed the context (directly or through a stack slot
/// holding it); None otherwise.
fn context_reads(insns: &[Insn], a: &Analyzer) -> Option<Vec<(u32, u32)>> {
    let mut spans = Vec::new();
    for (pc, insn) in insns.iter().enumerate().filter(|&(pc, _)| a.reached[pc]) {
        if a.ctx_escapes[pc] {
            return None;
        }
        let access = a.access[pc];
        match insn {
            Insn::Load { .. } | Insn::Store { .. } | Insn::Atomic { .. } if !access.proven => return None,
            Insn::Load { .. } if access.target == Target::Context => spans.push((a.ctx_start[pc], a.ctx_end[pc])),
            Insn::Store { .. } | Insn::Atomic { .. } if access.target == Target::Context => return None,
            _ => {}
        }
    }
    spans.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in spans {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    Some(merged)
}

struct Analyzer<'a> {
    insns: &'a [Insn],
    helpers: &'a HelperTable,
    pointees: &'a HashMap<usize, Pointee>,
    resolved: &'a [usize],
    access: Vec<Access>,
    /// For proven context accesses: the end offset they reach.
    ctx_end: Vec<u32>,
    /// For proven context accesses: the lowest offset they reach.
    ctx_start: Vec<u32>,
    /// Per call: whether it hands the context to code the analysis does not follow (a helper,
    /// or anyone through a stack slot holding it), at its last visit.
    ctx_escapes: Vec<bool>,
    /// Helper calls with a map in r1, at their last visit.
    keyless_map_calls: Vec<(usize, u32)>,
    helper_args: HashMap<usize, HelperArgs>,
    /// Map lookups by slot, at their last visit: inlinable (Some) or not.
    inline_lookups: HashMap<usize, Option<ArrayLayout>>,
    /// Inlinable lookups whose key was a known constant at their last visit.
    lookup_keys: HashMap<usize, u32>,
    /// r1-r5 at each local call site, at its last visit.
    call_args: HashMap<usize, [Val; 5]>,
    /// Frames above the current function's on every path to it.
    frames_above: usize,
    /// Slots the analysis has stepped through.
    reached: Vec<bool>,
}

/// Where control goes after one instruction.
enum Next {
    /// The next slot(s), in the same state.
    Fall(usize),
    /// A jump: the target with its state, and the fall-through with its state (None where
    /// the edge cannot be taken).
    Branch {
        target: usize,
        taken: Option<Box<State>>,
        fall: Option<Box<State>>,
    },
    /// An unconditional jump.
    Jump(usize),
    Exit,
}

impl Analyzer<'_> {
    /// Runs one function to a fixpoint; false if it needed too many steps.
    fn function(&mut self, f: &Function, args: [Val; 5]) -> bool {
        let insns = self.insns;
        let mut leaders = BTreeSet::new();
        let mut loop_heads = BTreeSet::new();
        for (pc, insn) in insns.iter().enumerate().take(f.end).skip(f.start) {
            if let Some(t) = insn.jump_target(pc) {
                leaders.insert(t as usize);
                if t as usize <= pc {
                    loop_heads.insert(t as usize);
                }
                leaders.insert(pc + 1);
            }
        }
        // Widening thresholds: the constants the function compares with, and their neighbours.
        let mut thresholds: Vec<i64> = (f.start..f.end)
            .filter_map(|pc| match insns[pc] {
                Insn::Jump { width: Width::W64, src: Operand::Imm(i), .. } => Some(i as i64),
                Insn::Jump { width: Width::W32, src: Operand::Imm(i), .. } if i >= 0 => Some(i as i64),
                _ => None,
            })
            .flat_map(|c| [c.saturating_sub(1), c, c.saturating_add(1)])
            .collect();
        thresholds.sort_unstable();
        thresholds.dedup();
        let mut states: HashMap<usize, (State, u32)> = HashMap::new();
        states.insert(f.start, (State::entry(args), 0));
        let mut work = BTreeSet::from([f.start]);
        // Each block is revisited only when its entry state grows, and widening bounds that.
        let mut fuel = 64 * (f.end - f.start) + 10_000;
        while let Some(start) = work.pop_first() {
            let mut s = states[&start].0.clone();
            let mut pc = start;
            loop {
                if fuel == 0 {
                    return false;
                }
                fuel -= 1;
                let mut flow = |pc: usize, s: State| {
                    let widen = loop_heads.contains(&pc).then_some(thresholds.as_slice());
                    flow_into(pc, s, &mut states, &mut work, widen)
                };
                match self.step(pc, &mut s) {
                    Next::Fall(next) => {
                        if leaders.contains(&next) {
                            flow(next, s);
                            break;
                        }
                        pc = next;
                    }
                    Next::Jump(t) => {
                        flow(t, s);
                        break;
                    }
                    Next::Branch { target, taken, fall } => {
                        if let Some(t) = taken {
                            flow(target, *t);
                        }
                        if let Some(n) = fall {
                            flow(pc + 1, *n);
                        }
                        break;
                    }
                    Next::Exit => break,
                }
            }
        }
        true
    }

    fn step(&mut self, pc: usize, s: &mut State) -> Next {
        self.reached[pc] = true;
        let insn = self.insns[pc];
        if matches!(insn, Insn::Call(_) | Insn::CallReg(_)) {
            let args = &s.regs[1..6];
            let local = matches!(insn, Insn::Call(CallTarget::Local(_)));
            let direct = !local && args.iter().any(|v| v.base == Base::Ctx);
            let in_slot = args.iter().any(|v| v.base == Base::Stack) && s.slots.iter().any(|(_, v)| v.base == Base::Ctx);
            self.ctx_escapes[pc] = direct || in_slot;
            let mut args = HelperArgs::default();
            if let Insn::Call(CallTarget::Helper(id)) = insn {
                if let Base::Map { value_size, key_size, .. } = s.regs[1].base {
                    if key_size == 0 && TAKE_KEYS.contains(&id) {
                        self.keyless_map_calls.push((pc, id));
                    }
                    args.key = self.readable(s.regs[2], key_size);
                    args.value = self.readable(s.regs[3], value_size);
                }
                for i in 0..4 {
                    let len = s.regs[2 + i].as_scalar().filter(|r| r.lo >= 0 && r.hi <= u32::MAX as i64);
                    if len.is_some_and(|r| self.readable(s.regs[1 + i], r.hi as u32)) {
                        args.sized |= 1 << i;
                    }
                }
            }
            if args != HelperArgs::default() {
                self.helper_args.insert(pc, args);
            } else {
                self.helper_args.remove(&pc);
            }
        }
        match insn {
            Insn::Alu { width, op, dst, src } => {
                let a = s.regs[dst.index()];
                let b = match src {
                    Operand::Reg(r) => s.regs[r.index()],
                    Operand::Imm(i) => Val::scalar(Range::of_imm(width, i)),
                };
                s.regs[dst.index()] = alu(width, op, a, b);
            }
            Insn::Neg { width, dst } => {
                let a = s.regs[dst.index()];
                let zero = Val::scalar(Range::exact(0));
                s.regs[dst.index()] = alu(width, AluOp::Sub, zero, Val::scalar(a.as_scalar().unwrap_or(Range::TOP)));
            }
            Insn::Endian { bits, dst, .. } => {
                let keep = bits == 64 && matches!(insn, Insn::Endian { order: crate::insn::ByteOrder::ToLe, .. });
                let v = s.regs[dst.index()];
                s.regs[dst.index()] = match v.as_scalar() {
                    Some(_) if keep => v,
                    _ if bits < 64 => Val::scalar(Range::new(0, (1i64 << bits) - 1)),
                    _ => Val::TOP,
                };
            }
            Insn::Lddw { dst, kind, lo, hi } => {
                s.regs[dst.index()] = match (kind, self.pointees.get(&pc)) {
                    (_, Some(&Pointee::Map { value_size, key_size, .. })) => {
                        let handle = (lo as u32 as u64) | ((hi as u32 as u64) << 32);
                        Val { base: Base::Map { value_size, key_size, handle }, off: Range::exact(0) }
                    }
                    (_, Some(&Pointee::Value { size, offset })) => Val { base: Base::Mem { size }, off: Range::exact(offset as i64) },
                    (LddwKind::Func, None) => Val::scalar(Range::exact(pc as i64 + 1 + lo as i64)),
                    (_, None) if self.resolved.binary_search(&pc).is_ok() => Val::TOP,
                    (_, None) => Val::scalar(Range::exact(((lo as u32 as u64) | ((hi as u32 as u64) << 32)) as i64)),
                };
                return Next::Fall(pc + 2);
            }
            Insn::LddwHigh => return Next::Fall(pc + 1),
            Insn::Load { size, signed, dst, base, off } => {
                let b = s.regs[base.index()];
                self.record(pc, b, off, size, false, s);
                let at = b.off.singleton().and_then(|o| o.checked_add(off as i64)).filter(|_| b.base == Base::Stack);
                s.regs[dst.index()] = match (at, size) {
                    (Some(k), MemSize::DW) if k % 8 == 0 => s.slot(k),
                    (Some(k), MemSize::W) if !signed => s.word(k).map_or(Val::scalar(Range::loaded(4, false)), |w| Val::scalar(Range::exact(w as i64))),
                    // A pointer field of a BTF object is another (or null).
                    _ if b.base == Base::Btf && size == MemSize::DW => Val { base: Base::Btf, off: Range::exact(0) },
                    _ => Val::scalar(Range::loaded(size.bytes(), signed)),
                };
            }
            Insn::Store { size, base, off, src } => {
                let b = s.regs[base.index()];
                self.record(pc, b, off, size, true, s);
                if let (Base::Stack, Some(k)) = (b.base, b.off.singleton().and_then(|o| o.checked_add(off as i64))) {
                    let v = match src {
                        Operand::Reg(r) => s.regs[r.index()],
                        Operand::Imm(i) => Val::scalar(Range::exact(i as i64)),
                    };
                    if size == MemSize::DW && k % 8 == 0 && (-(FRAME_SIZE as i64)..0).contains(&k) {
                        s.set_slot(k, v);
                    }
                    // A constant's low 32 bits, stored as a word (`record` clobbered the bytes).
                    if size == MemSize::W && k % 4 == 0 && (-(FRAME_SIZE as i64)..0).contains(&k) {
                        if let Some(c) = v.as_scalar().and_then(Range::singleton) {
                            s.set_word(k, c as u32);
                        }
                    }
                }
            }
            Insn::Atomic { size, op, fetch, base, off, src } => {
                let b = s.regs[base.index()];
                self.record(pc, b, off, size, true, s);
                let old = Val::scalar(if size == MemSize::W { Range::U32 } else { Range::TOP });
                if op == AtomicOp::CmpXchg {
                    s.regs[0] = old;
                } else if fetch || op == AtomicOp::Xchg {
                    s.regs[src.index()] = old;
                }
            }
            Insn::Ja { .. } => return Next::Jump(insn.jump_target(pc).expect("a jump") as usize),
            Insn::Jump { width, cond, dst, src, .. } => {
                let target = insn.jump_target(pc).expect("a jump") as usize;
                let (taken, fall) = branch(s, width, cond, dst, src);
                return Next::Branch { target, taken: taken.map(Box::new), fall: fall.map(Box::new) };
            }
            Insn::Call(CallTarget::Helper(id)) => {
                let effects = self.helpers.get(id).map(|h| h.effects).unwrap_or_default();
                let r0 = match effects.returns {
                    HelperReturn::Scalar => Val::TOP,
                    HelperReturn::MapValueOrNull => {
                        let inlined = self.inlinable_lookup(s);
                        let key = s.regs[2];
                        let constant = match (key.base, key.off.singleton()) {
                            (Base::Stack, Some(k)) if inlined.is_some() => s.word(k),
                            _ => None,
                        };
                        self.inline_lookups.insert(pc, inlined);
                        match constant {
                            Some(k) => self.lookup_keys.insert(pc, k),
                            None => self.lookup_keys.remove(&pc),
                        };
                        match s.regs[1].base {
                            Base::Map { value_size, .. } => Val { base: Base::MemOrNull { size: value_size, id: pc as u32 }, off: Range::exact(0) },
                            _ => Val::TOP,
                        }
                    }
                    HelperReturn::MemOrNull { size_arg } if (1..=5).contains(&size_arg) => {
                        match s.regs[size_arg as usize].as_scalar().and_then(Range::singleton) {
                            Some(n) if (0..=u32::MAX as i64).contains(&n) => {
                                Val { base: Base::MemOrNull { size: n as u32, id: pc as u32 }, off: Range::exact(0) }
                            }
                            _ => Val::TOP,
                        }
                    }
                    HelperReturn::MemOrNull { .. } => Val::TOP,
                    HelperReturn::BtfObject => Val { base: Base::Btf, off: Range::exact(0) },
                };
                // Older copies of this call's result are different pointers from now on.
                s.map_vals(|v| if matches!(v.base, Base::MemOrNull { id, .. } if id == pc as u32) { Val::TOP } else { v });
                if !effects.leaves_stack {
                    s.forget_frame();
                }
                s.regs[0] = r0;
                s.regs[1..6].fill(Val::TOP);
            }
            Insn::Call(_) | Insn::CallReg(_) => {
                if matches!(insn, Insn::Call(CallTarget::Local(_))) {
                    let args: [Val; 5] = std::array::from_fn(|i| s.regs[1 + i]);
                    self.call_args.insert(pc, args);
                }
                s.forget_frame();
                s.regs[0..6].fill(Val::TOP);
            }
            Insn::Exit => return Next::Exit,
        }
        Next::Fall(pc + 1)
    }

    /// The array layout of a lookup in state `s` whose map is one array known at load time
    /// and whose key pointer (r2) is proven to have 4 readable bytes.
    fn inlinable_lookup(&self, s: &State) -> Option<ArrayLayout> {
        let Base::Map { handle, .. } = s.regs[1].base else { return None };
        let layout = self.pointees.iter().find_map(|(&pc, p)| match (p, self.insns[pc]) {
            (Pointee::Map { array: Some(l), .. }, Insn::Lddw { lo, hi, .. }) if (lo as u32 as u64) | ((hi as u32 as u64) << 32) == handle => Some(*l),
            _ => None,
        })?;
        let key = s.regs[2];
        let (lo, hi) = (key.off.lo as i128, key.off.hi as i128 + 4);
        let readable = match key.base {
            Base::Stack => lo >= -(FRAME_SIZE as i128) && hi <= 0,
            Base::Mem { size } => lo >= 0 && hi <= size as i128,
            _ => false,
        };
        readable.then_some(layout)
    }

    /// Whether `n` bytes from pointer `v` are readable on every run: in the frames the
    /// current function may reach, or in memory of known size (context proofs are conditional,
    /// and not used here).
    fn readable(&self, v: Val, n: u32) -> bool {
        let (lo, hi) = (v.off.lo as i128, v.off.hi as i128 + n as i128);
        match v.base {
            Base::Stack => lo >= -(FRAME_SIZE as i128) && hi <= (FRAME_SIZE * self.frames_above) as i128,
            Base::Mem { size } => lo >= 0 && hi <= size as i128,
            _ => false,
        }
    }

    /// Decides whether the access at `pc` through `base + off` is proven, and forgets the
    /// stack slots a store may overwrite.
    fn record(&mut self, pc: usize, base: Val, off: i16, size: MemSize, write: bool, s: &mut State) {
        let (lo, hi) = (base.off.lo as i128 + off as i128, base.off.hi as i128 + off as i128 + size.bytes() as i128);
        let (target, proven) = match base.base {
            // This function's frame and those of the functions above it on every path here.
            Base::Stack => (Target::Stack, lo >= -(FRAME_SIZE as i128) && hi <= (FRAME_SIZE * self.frames_above) as i128),
            Base::Ctx => (Target::Context, lo >= 0 && hi <= CTX_PROOF_LIMIT as i128),
            Base::Mem { size } => (Target::Memory, lo >= 0 && hi <= size as i128),
            Base::MemOrNull { .. } | Base::Map { .. } | Base::Btf => (Target::Memory, false),
            Base::Scalar => (Target::Unknown, false),
        };
        let aligned = base.off.lo == base.off.hi && lo.rem_euclid(size.bytes() as i128) == 0;
        // At a constant offset, as the kernel demands of these pointers (it refuses a variable
        // one; here such a load keeps its check).
        let probe = !write && base.base == Base::Btf && base.off.singleton().is_some();
        // The last visit of a block has its final state: it decides.
        self.access[pc] = Access { target, proven, aligned, probe };
        self.ctx_end[pc] = if base.base == Base::Ctx && proven { hi as u32 } else { 0 };
        self.ctx_start[pc] = if base.base == Base::Ctx && proven { lo as u32 } else { 0 };
        if write {
            match base.base {
                // Only the bytes it can reach (an unproven store may leave the frame, but
                // then it cannot touch this frame's slots either).
                Base::Stack => s.clobber(lo, hi),
                // A proven store stays in its own region, away from the stack.
                _ if proven => {}
                _ => s.forget_frame(),
            }
        }
    }
}

/// Merges `s` into the state at leader `pc` (widening with `widen`'s thresholds at a loop head
/// seen twice already) and queues the leader if its state grew.
fn flow_into(pc: usize, s: State, states: &mut HashMap<usize, (State, u32)>, work: &mut BTreeSet<usize>, widen: Option<&[i64]>) {
    match states.get_mut(&pc) {
        None => {
            states.insert(pc, (s, 1));
            work.insert(pc);
        }
        Some((old, visits)) => {
            *visits += 1;
            let merged = old.merge(&s, widen.filter(|_| *visits > 2));
            if merged != *old {
                *old = merged;
                work.insert(pc);
            }
        }
    }
}

/// The abstract result of an ALU instruction.
fn alu(width: Width, op: AluOp, a: Val, b: Val) -> Val {
    if width == Width::W32 {
        // 32-bit arithmetic on a pointer yields a number like any other.
        let (x, y) = (a.as_scalar().unwrap_or(Range::TOP), b.as_scalar().unwrap_or(Range::TOP));
        return Val::scalar(Range::alu32(op, x, y));
    }
    match (op, a.base, b.base) {
        (AluOp::Mov, _, _) => b,
        (_, Base::Scalar, Base::Scalar) => Val::scalar(Range::alu64(op, a.off, b.off)),
        // Pointer plus or minus a number: same region, moved offset.
        (AluOp::Add, pa, Base::Scalar) if movable(pa) => Val { base: pa, off: a.off.plus(b.off) },
        (AluOp::Add, Base::Scalar, pb) if movable(pb) => Val { base: pb, off: b.off.plus(a.off) },
        (AluOp::Sub, pa, Base::Scalar) if movable(pa) => Val { base: pa, off: a.off.minus(b.off) },
        _ => Val::TOP,
    }
}

/// Whether arithmetic keeps a pointer's kind (not for maybe-null pointers and map
/// references, whose checks the kernel also demands first).
fn movable(b: Base) -> bool {
    matches!(b, Base::Stack | Base::Ctx | Base::Mem { .. } | Base::Btf)
}

fn negate(c: JmpCond) -> Option<JmpCond> {
    use JmpCond::*;
    Some(match c {
        Eq => Ne,
        Ne => Eq,
        Gt => Le,
        Le => Gt,
        Ge => Lt,
        Lt => Ge,
        Sgt => Sle,
        Sle => Sgt,
        Sge => Slt,
        Slt => Sge,
        Set => return None,
    })
}

/// The states on the taken and the fall-through edge of a conditional jump (None: the edge
/// is never taken).
fn branch(s: &State, width: Width, cond: JmpCond, dst: Reg, src: Operand) -> (Option<State>, Option<State>) {
    let x = s.regs[dst.index()];
    // A null check on a maybe-null pointer: every copy of it learns the answer.
    if let (Base::MemOrNull { size, id }, Width::W64, Operand::Imm(0), JmpCond::Eq | JmpCond::Ne) = (x.base, width, src, cond) {
        let resolve = |nonnull: bool| {
            let mut t = s.clone();
            t.map_vals(|v| match v.base {
                Base::MemOrNull { id: i, .. } if i == id => {
                    if nonnull {
                        Val { base: Base::Mem { size }, off: v.off }
                    } else {
                        Val::scalar(Range::exact(0))
                    }
                }
                _ => v,
            });
            t
        };
        let eq = cond == JmpCond::Eq;
        return (Some(resolve(!eq)), Some(resolve(eq)));
    }
    let y = match src {
        Operand::Reg(r) => s.regs[r.index()],
        Operand::Imm(i) => Val::scalar(Range::exact(match width {
            Width::W64 => i as i64,
            Width::W32 => i as i64, // must be non-negative (checked below), so as u32 or i32 alike
        })),
    };
    let (Some(xr), Some(yr)) = (x.as_scalar(), y.as_scalar()) else { return (Some(s.clone()), Some(s.clone())) };
    // A 32-bit comparison means the same as a 64-bit one when both values are zero-extended
    // 32-bit values, and for a signed one also non-negative as 32-bit values.
    let limit = if matches!(cond, JmpCond::Sgt | JmpCond::Sge | JmpCond::Slt | JmpCond::Sle) { i32::MAX as i64 } else { u32::MAX as i64 };
    let fits = |r: Range| r.lo >= 0 && r.hi <= limit;
    if width == Width::W32 && !(fits(xr) && fits(yr)) {
        return (Some(s.clone()), Some(s.clone()));
    }
    let edge = |c: Option<JmpCond>| -> Option<State> {
        let Some(c) = c else { return Some(s.clone()) };
        let (nx, ny) = refine(c, xr, yr)?;
        let mut t = s.clone();
        t.regs[dst.index()] = Val::scalar(nx);
        if let Operand::Reg(r) = src {
            t.regs[r.index()] = Val::scalar(ny);
            if r == dst {
                // `if rX op rX`: both refinements apply to one register.
                t.regs[r.index()] = Val::scalar(nx.meet(ny)?);
            }
        }
        Some(t)
    };
    let taken_cond = if cond == JmpCond::Set { None } else { Some(cond) };
    (edge(taken_cond), edge(negate(cond)))
}

/// Narrows `x` and `y` given that `x cond y` holds; None if it cannot.
fn refine(cond: JmpCond, x: Range, y: Range) -> Option<(Range, Range)> {
    use JmpCond::*;
    let below = |hi: i64| hi.checked_sub(1).map(|h| Range::new(i64::MIN, h));
    let above = |lo: i64| lo.checked_add(1).map(|l| Range::new(l, i64::MAX));
    match cond {
        Eq => {
            let m = x.meet(y)?;
            Some((m, m))
        }
        Ne => {
            let trim = |a: Range, b: Range| -> Option<Range> {
                match b.singleton() {
                    Some(c) if a.singleton() == Some(c) => None,
                    Some(c) if a.lo == c => Some(Range::new(c + 1, a.hi)),
                    Some(c) if a.hi == c => Some(Range::new(a.lo, c - 1)),
                    _ => Some(a),
                }
            };
            Some((trim(x, y)?, trim(y, x)?))
        }
        Slt => {
            let nx = x.meet(below(y.hi)?)?;
            let ny = y.meet(above(nx.lo)?)?;
            Some((nx, ny))
        }
        Sle => {
            let nx = x.meet(Range::new(i64::MIN, y.hi))?;
            let ny = y.meet(Range::new(nx.lo, i64::MAX))?;
            Some((nx, ny))
        }
        Sgt => refine(Slt, y, x).map(|(a, b)| (b, a)),
        Sge => refine(Sle, y, x).map(|(a, b)| (b, a)),
        // Unsigned: only when `y` cannot be negative (a huge unsigned value); then `x` below
        // it is non-negative too, and the signed reasoning applies.
        Lt if y.nonneg() => {
            let nx = x.meet(Range::new(0, y.hi.checked_sub(1)?.max(0)))?;
            if y.hi == 0 {
                return None;
            }
            let ny = y.meet(above(nx.lo)?)?;
            Some((nx, ny))
        }
        Le if y.nonneg() => {
            let nx = x.meet(Range::new(0, y.hi))?;
            let ny = y.meet(Range::new(nx.lo, i64::MAX))?;
            Some((nx, ny))
        }
        Gt if x.nonneg() => refine(Lt, y, x).map(|(a, b)| (b, a)),
        Ge if x.nonneg() => refine(Le, y, x).map(|(a, b)| (b, a)),
        // `x > y` with `x` possibly negative: nothing to learn about either... except that
        // `y` is then below the unsigned maximum, which ranges cannot say.
        _ => Some((x, y)),
    }
}

#[cfg(test)]
mod tests;
