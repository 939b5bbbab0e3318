//! A verified program: decoded instructions split into functions, ready for either engine.

use crate::exec::HelperTable;
use crate::insn::Insn;
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
    static_access: Vec<bool>,
    helpers: Arc<HelperTable>,
}

impl Program {
    pub(crate) fn new(insns: Vec<Insn>, functions: Vec<Function>, depths: Vec<usize>, static_access: Vec<bool>, helpers: Arc<HelperTable>) -> Self {
        Program { insns, functions, depths, static_access, helpers }
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

    /// Whether the memory access at `pc` was proven in bounds by the verifier (r10-based).
    pub fn access_is_static(&self, pc: usize) -> bool {
        self.static_access[pc]
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
