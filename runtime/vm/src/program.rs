//! A verified program: decoded instructions split into functions, ready for either engine.

use crate::analysis::{Access, Analysis, ArrayLayout, ContextNeeds, Pointee};
use crate::exec::HelperTable;
use crate::insn::Insn;
use std::collections::HashMap;
use std::sync::Arc;

/// A function of a program: the entry (index 0) or a bpf-to-bpf callee, slots `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// First slot.
    pub start: usize,
    /// One past the last slot.
    pub end: usize,
    /// Whether its address is taken (`lddw` with `src = 4`): helpers may call it back.
    pub callback: bool,
}

impl Function {
    /// Number of slots; what one call of it as a callback costs the loop budget.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Never true: a function has at least its exit.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A program that passed the verifier. Only [`crate::verifier`] makes one.
#[derive(Clone, Debug)]
pub struct Program {
    insns: Vec<Insn>,
    functions: Vec<Function>,
    depths: Vec<usize>,
    access: Vec<Access>,
    ctx_needs: ContextNeeds,
    ctx_reads: Option<Vec<(u32, u32)>>,
    helper_args: HashMap<usize, crate::analysis::HelperArgs>,
    inline_lookups: HashMap<usize, ArrayLayout>,
    lookup_keys: HashMap<usize, u32>,
    walk_checks_on_entry: bool,
    /// What the map-naming `lddw`s (by slot) point to, as the resolver described them.
    pointees: HashMap<usize, Pointee>,
    /// Slots of the `lddw`s the resolver turned into constants (map references, value addresses).
    resolved: Vec<usize>,
    helpers: Arc<HelperTable>,
}

/// Programs are equal when the engines would run them identically: same instructions (map
/// references resolved alike), functions, proofs, inlined lookups, and the same helper table.
impl PartialEq for Program {
    fn eq(&self, other: &Program) -> bool {
        self.insns == other.insns
            && self.functions == other.functions
            && self.depths == other.depths
            && self.access == other.access
            && self.ctx_needs == other.ctx_needs
            && self.ctx_reads == other.ctx_reads
            && self.helper_args == other.helper_args
            && self.inline_lookups == other.inline_lookups
            && self.lookup_keys == other.lookup_keys
            && self.walk_checks_on_entry == other.walk_checks_on_entry
            && self.pointees == other.pointees
            && self.resolved == other.resolved
            && Arc::ptr_eq(&self.helpers, &other.helpers)
    }
}

impl Program {
    pub(crate) fn new(
        insns: Vec<Insn>,
        functions: Vec<Function>,
        depths: Vec<usize>,
        proofs: Analysis,
        pointees: HashMap<usize, Pointee>,
        resolved: Vec<usize>,
        helpers: Arc<HelperTable>,
    ) -> Self {
        let Analysis {
            access,
            ctx: ctx_needs,
            inline_lookups,
            lookup_keys,
            walk_checks_on_entry,
            reachable: _,
            reach_known: _,
            ctx_reads,
            helper_args,
            keyless_map_calls: _,
        } = proofs;
        Program {
            insns,
            functions,
            depths,
            access,
            ctx_needs,
            ctx_reads,
            helper_args,
            inline_lookups,
            lookup_keys,
            walk_checks_on_entry,
            pointees,
            resolved,
            helpers,
        }
    }

    /// Whether the `lddw` at `slot` was resolved from a map reference: its constant is an
    /// address or reference of this process, not part of the program.
    pub fn is_resolved(&self, slot: usize) -> bool {
        self.resolved.binary_search(&slot).is_ok()
    }

    /// Function depths, by function index.
    pub(crate) fn depths(&self) -> &[usize] {
        &self.depths
    }

    /// The inlined array lookups, by call slot.
    pub(crate) fn inline_lookups(&self) -> &HashMap<usize, ArrayLayout> {
        &self.inline_lookups
    }

    /// For an inlined lookup (see [`Program::inline_lookup`]): its key, where the verifier
    /// knows it on every path (`u32 key = 2` on the stack): the value's address is then
    /// fixed, or the lookup always misses.
    pub fn lookup_key(&self, pc: usize) -> Option<u32> {
        self.lookup_keys.get(&pc).copied()
    }

    /// What the `lddw` at `slot` points to, if it names a map the resolver described.
    pub fn pointee(&self, slot: usize) -> Option<Pointee> {
        self.pointees.get(&slot).copied()
    }

    /// For the map lookup call at `pc`: the array it looks up, when an engine may compute the
    /// value's address itself (the key's 4 bytes proven readable; see [`ArrayLayout`]).
    pub fn inline_lookup(&self, pc: usize) -> Option<ArrayLayout> {
        self.inline_lookups.get(&pc).copied()
    }

    /// Frames the deepest call chain starting at function `index` needs (1 for a leaf).
    pub fn function_depth(&self, index: usize) -> usize {
        self.depths[index]
    }

    /// The instructions, one per slot; `lddw` pseudo forms other than `func` are resolved to
    /// plain constants.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The functions, sorted by start; the entry function is first.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Index in [`Program::functions`] of the function starting at slot `pc`.
    pub fn function_starting_at(&self, pc: usize) -> Option<usize> {
        self.functions.binary_search_by(|f| f.start.cmp(&pc)).ok()
    }

    /// The callback starting at slot `pc` and the frame pointer it runs with in `state` (the
    /// frames at the bottom of the stack), or None if no callback starts there.
    pub fn callback_frame(&self, pc: usize, state: &crate::exec::RunState) -> Option<(usize, u64)> {
        let f = self.function_starting_at(pc).filter(|&f| self.functions[f].callback)?;
        Some((f, state.callback_frame_pointer(self.depths[f])))
    }

    /// What the verifier established about the load, store or atomic at `pc`: whether it is
    /// in bounds on every run (for context accesses, every run that meets
    /// [`Program::context_needs`]) and which region it likely touches.
    pub fn access(&self, pc: usize) -> Access {
        self.access[pc]
    }

    /// Whether an engine may check the accesses of a walked loop (see [`crate::walks`]) once
    /// when the loop is entered, instead of on every iteration; false when the program was
    /// verified to keep every check.
    pub fn walk_checks_on_entry(&self) -> bool {
        self.walk_checks_on_entry
    }

    /// What a run's context must be for the proofs of context accesses to hold; the engines
    /// check every access of a run that does not meet it.
    pub fn context_needs(&self) -> ContextNeeds {
        self.ctx_needs
    }

    /// The context bytes the program's own loads may read, as sorted, disjoint `[start, end)`
    /// spans, when the verifier knows them all: every access proven, the context only read, and
    /// never handed to a helper as such. A helper given a pointer the verifier did not prove
    /// may still be given a copy of the context it lost track of (a join with another pointer):
    /// an engine that builds the context per run (a GPU probe) may fill only these bytes when
    /// its helpers read no unproven pointer. None when any of that is not known.
    pub fn context_reads(&self) -> Option<&[(u32, u32)]> {
        self.ctx_reads.as_deref()
    }

    /// For the helper call at `pc`: which of its pointer arguments are proven readable on every
    /// run (with a map in r1, a whole key in r2 and value in r3; any argument followed by its
    /// size), so that a helper may read them unchecked (the GPU's map and ring helpers then
    /// skip their range checks).
    pub fn helper_args(&self, pc: usize) -> crate::analysis::HelperArgs {
        self.helper_args.get(&pc).copied().unwrap_or_default()
    }

    /// Number of memory accesses proven in bounds, and of all memory accesses.
    pub fn proof_counts(&self) -> (usize, usize) {
        let mem = |i: &Insn| matches!(i, Insn::Load { .. } | Insn::Store { .. } | Insn::Atomic { .. });
        let all = self.insns.iter().filter(|i| mem(i)).count();
        let proven = self.insns.iter().zip(&self.access).filter(|(i, a)| mem(i) && a.proven).count();
        (proven, all)
    }

    /// The helpers the program was verified against.
    pub fn helpers(&self) -> &Arc<HelperTable> {
        &self.helpers
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Never true: the verifier rejects empty programs.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}
