//! The translation loop: one eBPF function to one Cranelift function.
//!
//! Every eBPF function (the entry and each bpf-to-bpf callee) becomes a Cranelift function
//! `(state, fp, r1, r2, r3, r4, r5) -> r0`. r0-r9 are Cranelift variables, r10 is the `fp`
//! parameter; a callee gets `fp - 512`, so frames are disjoint 512-byte slices of the run's
//! stack. Memory accesses the verifier proved in bounds are not checked; the others are checked
//! inline against the fast region the verifier says the pointer comes from (all three fast
//! regions of [`RunState`] when it does not know: stack, context, the first extra region, which
//! for a runtime is the shared region holding map values) and then out of line against all.
//! Faults and helper-requested stops make every function return at once; the status in
//! `RunState` tells the caller what happened.

use crate::imports::Import;
use crate::runtime_calls::{RAISE_LOCATE, RAISE_LOOP_BUDGET, RAISE_MISALIGNED, RAISE_UNKNOWN_HELPER};
use bpftime_vm::analysis::{ArrayLayout, Target};
use bpftime_vm::exec::{back_edge_cost, size_index, state_offsets as so, FRAME_SIZE};
use bpftime_vm::insn::{AluOp, AtomicOp, ByteOrder, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, Reg, Width};
use bpftime_vm::loops::{counted_loops, loop_exits};
use bpftime_vm::program::Function as EbpfFunction;
use bpftime_vm::walks::{walked_loops, GoesOn, WalkedLoop, MAX_ENTRY_VALUE, MAX_ITERATIONS, MAX_LOOP_SLOTS};
use bpftime_vm::Program;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I16, I32, I64, I8};
use cranelift_codegen::ir::{AtomicRmwOp, Block, FuncRef, InstBuilder, MemFlagsData, SigRef, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

/// What the translation needs from the module it compiles into.
pub(crate) trait Linker {
    /// A reference to the program's function `index`.
    fn function(&mut self, b: &mut FunctionBuilder, index: usize) -> FuncRef;
    /// The value of `import` (a constant, or a load from the code's import table).
    fn import(&mut self, b: &mut FunctionBuilder, import: Import) -> Value;
}

/// Signatures imported into the function being built.
pub(crate) struct Sigs {
    /// `(r1..r5, state) -> r0`: helpers.
    pub helper: SigRef,
    /// `(state)`: the slow memory check of `state.check_addr`/`check_what` (`preserve_all`).
    pub check: SigRef,
    /// `(state, pc, what, arg)`: record a fault.
    pub raise: SigRef,
    /// `(program, state, r1, r2, fp) -> r0`: run the program with every check.
    pub fallback: SigRef,
    /// `() -> cpu`: the calling thread's CPU (inlined per-CPU array lookups).
    pub cpu: SigRef,
}

pub(crate) struct FnTranslator<'a, 'b> {
    pub b: FunctionBuilder<'b>,
    pub prog: &'a Program,
    pub func: EbpfFunction,
    pub sigs: Sigs,
    pub linker: &'a mut dyn Linker,
    regs: [Variable; 10],
    /// Backward jumps left; kept in a register, written back to `RunState` around calls.
    budget: Variable,
    /// The CPU the run is on, asked at the function's entry where its inlined per-CPU array
    /// lookups all ask one function for it (else each asks).
    cpu: Option<Value>,
    /// Whether the function has a backward jump: without one it never changes the budget, so
    /// it neither loads nor stores it (callees spend theirs in `RunState` directly).
    tracks_budget: bool,
    fp: Value,
    state: Value,
    /// Leader blocks by `pc - start`.
    blocks: Vec<Option<Block>>,
    /// By `pc - start`: conditional jumps over one register operation, emitted as that
    /// operation and a `select` (see [`select_skips`]).
    selects: Vec<bool>,
    /// Stack stores nothing reads (see [`dead_stores`]), left out.
    dead_stores: std::collections::HashSet<usize>,
    /// By `pc - start`: ways out of loops (see [`loop_exits`]), laid out after the function's
    /// hot code so that a loop's own branches fall through ...
    loop_exits: Vec<bool>,
    /// ... but for those beside a loop's entry: the edges (source slot, target slot) of
    /// [`Self::beside_entries`], sorted, ...
    beside_entry: Vec<(usize, usize)>,
    /// ... and by `pc - start`, whether slot `pc` is the target of one.
    beside_target: Vec<bool>,
    back_edges: Vec<(Block, usize, usize)>,
    /// Edges still to come into each leader, by `pc - start`.
    preds_left: Vec<u32>,
    to_seal: Vec<Block>,
    abort: Block,
    /// Whether the region bounds of checks may be hoisted (see [`HOIST_BOUNDS_UP_TO`]).
    hoist_bounds: bool,
    /// Counted and walked loops, each also compiled as a copy that skips the budget check and
    /// the checks of its walks (see [`Self::emit_fast_copy`]).
    loops: Vec<Versioned>,
    /// The loop whose fast copy is being emitted.
    fast: Option<usize>,
    /// The slot whose edge is being emitted (`None`: the function's entry).
    src: Option<usize>,
    /// Entries into counted loops, emitted at the end: (block, target slot, loop).
    dispatches: Vec<(Block, usize, usize)>,
    /// Edges out of fast copies (blocks that settle the budget first where the copy owes it),
    /// emitted at the end: (block, source slot, target slot, loop).
    fast_exits: Vec<(Block, usize, usize, usize)>,
    /// A walked loop's counter on entry, for fast copies that settle the budget on the way out.
    entry_counter: Variable,
    /// Latches of fast copies that pay the budget, emitted at the end: (block, loop, slot,
    /// target).
    fast_latches: Vec<(Block, usize, usize, usize)>,
}

/// A loop compiled twice: as written, and as a fast copy entered when what is known on entry
/// shows that the checks the copy drops cannot fail.
struct Versioned {
    head: usize,
    last: usize,
    guard: Guard,
    /// Accesses whose checks the fast copy drops.
    unchecked: Vec<usize>,
    /// How the fast copy accounts for the loop budget.
    charge: Charge,
    /// Leader blocks of the fast copy, by `pc - head`.
    fast_blocks: Vec<Option<Block>>,
    /// Some entry can take the fast copy.
    needed: bool,
    /// The fast copy is emitted.
    emitted: bool,
}

/// How a fast copy (whose guard showed the budget covers the whole loop) accounts for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Charge {
    /// Each latch subtracts its cost, unchecked.
    PerLatch,
    /// Nothing per iteration; each way out subtracts what the iterations cost, from the
    /// counter (a walked loop with one latch whose counter is known at every way out; see
    /// [`WalkedLoop::latches_taken`]).
    Settle,
    /// Nothing at all: the loop is in the entry function and no backward jump or call can
    /// follow it, so what is left of the budget is never looked at again.
    Unobserved,
}

/// What an entry into a versioned loop checks before it takes the fast copy.
enum Guard {
    /// A counted loop (`bpftime_vm::loops`), entered anywhere: the budget covers this most
    /// possible cost.
    Budget(u64),
    /// A walked loop (`bpftime_vm::walks`), entered at its entry: its trip count is in range,
    /// the budget covers every iteration and each unchecked walk fits in a region.
    Walked(WalkedLoop),
}

impl Versioned {
    fn contains(&self, pc: usize) -> bool {
        (self.head..=self.last).contains(&pc)
    }

    /// Whether an edge from outside into `pc` picks between the copies (else it goes to the
    /// checking copy: a walked loop's other entries lead out of it).
    /// Where its iterations start: a walked loop's entry, else its head.
    fn entry(&self) -> usize {
        match &self.guard {
            Guard::Budget(_) => self.head,
            Guard::Walked(w) => w.entry,
        }
    }

    fn dispatches_at(&self, pc: usize) -> bool {
        match &self.guard {
            Guard::Budget(_) => true,
            Guard::Walked(w) => pc == w.entry,
        }
    }
}

/// The stores of `func` to its stack frame that no later instruction of the run can read
/// (`bpftime_vm::stack`): a map key stored for an array lookup the JIT inlines with the key it
/// knows, most often. Every helper call that is not an inlined lookup counts as reading the
/// whole frame (the JIT knows nothing of what a helper reads); a lookup with a key known only
/// at run time reads its key from the stack.
pub(crate) fn dead_stores(prog: &Program, func: EbpfFunction) -> std::collections::HashSet<usize> {
    use bpftime_vm::stack::{ends_run, plan, CallUse};
    let Some(index) = prog.functions().iter().position(|f| f.start == func.start) else { return Default::default() };
    plan(prog, func.start, func.end, ends_run(prog, index), |pc, _| match (prog.inline_lookup(pc), prog.lookup_key(pc)) {
        (Some(_), Some(_)) => CallUse::ConstantKeyLookup,
        (Some(_), None) => CallUse::ReadsKey,
        (None, _) => CallUse::RunsProgram,
    })
    .dead
}

fn mem_flags() -> MemFlagsData {
    // Program memory: checked before every access, so it cannot trap.
    MemFlagsData::new().with_notrap()
}

fn fixed_state_flags() -> MemFlagsData {
    // Fields of RunState that no one changes during a run (region bounds, helper table).
    MemFlagsData::trusted().with_readonly()
}

/// Functions with at most this many checked accesses let Cranelift hoist the region bounds
/// out of loops (log2: 3.07 -> 2.31 us, memcpy of 1 MiB: 140 -> 113 us, loops whose accesses
/// cannot be proven). With many, the hoisted bounds crowd the registers: the 1,000-instruction
/// program with every check kept took 14 ms to compile without hoisting and 29 ms with it.
const HOIST_BOUNDS_UP_TO: usize = 32;

fn int_type(size: MemSize) -> Type {
    match size {
        MemSize::B => I8,
        MemSize::H => I16,
        MemSize::W => I32,
        MemSize::DW => I64,
    }
}

impl<'a, 'b> FnTranslator<'a, 'b> {
    pub fn new(mut b: FunctionBuilder<'b>, prog: &'a Program, func: EbpfFunction, sigs: Sigs, linker: &'a mut dyn Linker) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (state, fp) = (params[0], params[1]);
        let regs = std::array::from_fn(|_| b.declare_var(I64));
        let zero = b.ins().iconst(I64, 0);
        for (i, var) in regs.iter().enumerate() {
            let v = if (1..=5).contains(&i) { params[1 + i] } else { zero };
            b.def_var(*var, v);
        }
        let budget = b.declare_var(I64);
        let entry_counter = b.declare_var(I64);
        let tracks_budget = (func.start..func.end).any(|pc| prog.insns()[pc].jump_target(pc).is_some_and(|t| t <= pc as i64));
        let left = if tracks_budget { b.ins().load(I64, MemFlagsData::trusted(), state, so::BUDGET) } else { b.ins().iconst(I64, 0) };
        b.def_var(budget, left);
        // The CPU for inlined per-CPU array lookups, asked once where they all ask the same
        // function: a program with such a lookup runs on one CPU from start to end (the runtime
        // pins it), as the kernel's does.
        let cpu_lookups: Vec<(usize, u64)> =
            (func.start..func.end).filter_map(|pc| prog.inline_lookup(pc).filter(|l| l.cpu != 0).map(|l| (pc, l.cpu))).collect();
        let cpu = match cpu_lookups.first() {
            Some(&(pc, f)) if cpu_lookups.iter().all(|&(_, g)| g == f) => {
                let f = linker.import(&mut b, Import::ArrayCpu(pc));
                let call = b.ins().call_indirect(sigs.cpu, f, &[]);
                Some(b.inst_results(call)[0])
            }
            _ => None,
        };
        let abort = b.create_block();
        b.set_cold_block(abort);
        let len = func.end - func.start;
        let checked = (func.start..func.end)
            .filter(|&pc| matches!(prog.insns()[pc], Insn::Load { .. } | Insn::Store { .. } | Insn::Atomic { .. }) && !prog.access(pc).proven)
            .count();
        FnTranslator {
            b,
            prog,
            func,
            sigs,
            linker,
            regs,
            budget,
            tracks_budget,
            cpu,
            fp,
            state,
            blocks: vec![None; len],
            selects: select_skips(prog.insns(), func.start, func.end),
            dead_stores: dead_stores(prog, func),
            loop_exits: loop_exits(prog.insns(), func.start, func.end),
            beside_entry: Vec::new(),
            beside_target: vec![false; len],
            back_edges: Vec::new(),
            preds_left: vec![0; len],
            to_seal: Vec::new(),
            abort,
            hoist_bounds: checked <= HOIST_BOUNDS_UP_TO,
            loops: Vec::new(),
            fast: None,
            src: None,
            dispatches: Vec::new(),
            fast_exits: Vec::new(),
            entry_counter,
            fast_latches: Vec::new(),
        }
    }

    fn reg(&mut self, r: Reg) -> Value {
        if r == Reg::FP {
            self.fp
        } else {
            self.b.use_var(self.regs[r.index()])
        }
    }

    fn set(&mut self, r: Reg, v: Value) {
        self.b.def_var(self.regs[r.index()], v);
    }

    fn set32(&mut self, r: Reg, v32: Value) {
        let v = self.b.ins().uextend(I64, v32);
        self.set(r, v);
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    fn import(&mut self, import: Import) -> Value {
        self.linker.import(&mut self.b, import)
    }

    /// The operand as a value of the instruction's width.
    fn operand(&mut self, src: Operand, width: Width) -> Value {
        match (src, width) {
            (Operand::Reg(r), Width::W64) => self.reg(r),
            (Operand::Reg(r), Width::W32) => {
                let v = self.reg(r);
                self.b.ins().ireduce(I32, v)
            }
            (Operand::Imm(i), Width::W64) => self.b.ins().iconst(I64, i as i64),
            (Operand::Imm(i), Width::W32) => self.b.ins().iconst(I32, i as u32 as i64),
        }
    }

    fn dst_value(&mut self, dst: Reg, width: Width) -> Value {
        let v = self.reg(dst);
        match width {
            Width::W64 => v,
            Width::W32 => self.b.ins().ireduce(I32, v),
        }
    }

    fn set_width(&mut self, dst: Reg, width: Width, v: Value) {
        match width {
            Width::W64 => self.set(dst, v),
            Width::W32 => self.set32(dst, v),
        }
    }

    fn block_at(&mut self, pc: usize) -> Block {
        if let Some(l) = self.fast.filter(|&l| self.loops[l].contains(pc)) {
            return self.fast_block(l, pc);
        }
        let i = pc - self.func.start;
        match self.blocks[i] {
            Some(b) => b,
            None => {
                let b = self.b.create_block();
                self.blocks[i] = Some(b);
                b
            }
        }
    }

    fn is_leader(&self, pc: usize) -> bool {
        self.blocks[pc - self.func.start].is_some()
    }

    /// Records one more edge into the leader block at `pc`. After its last one the block is
    /// sealed (by [`Self::flush_seals`], once the branch is emitted), so that the SSA builder
    /// adds block parameters only where values really merge.
    fn edge_to(&mut self, pc: usize) -> Block {
        if let Some(l) = self.fast.filter(|&l| self.loops[l].contains(pc)) {
            // Inside the fast copy (sealed at the end).
            return self.fast_block(l, pc);
        }
        if let Some(l) = self.fast {
            // Out of a fast copy: through a block of its own (settling the budget where the copy
            // owes it its iterations), laid out of the loop's way unless it is beside an entry.
            let out = self.b.create_block();
            let src = self.src.expect("an edge out of a loop has a source");
            if self.beside_entry.binary_search(&(src, pc)).is_err() {
                self.b.set_cold_block(out);
            }
            self.fast_exits.push((out, src, pc, l));
            return out;
        }
        let src = self.src;
        if let Some(l) = self.loops.iter().position(|v| v.contains(pc) && !src.is_some_and(|s| v.contains(s)) && v.dispatches_at(pc)) {
            // Into a versioned loop from outside: a block that picks the copy.
            let dispatch = self.b.create_block();
            self.dispatches.push((dispatch, pc, l));
            return dispatch;
        }
        let block = self.block_at(pc);
        let left = &mut self.preds_left[pc - self.func.start];
        *left -= 1;
        if *left == 0 {
            self.to_seal.push(block);
        }
        block
    }

    /// The block of leader `pc` in the fast copy of loop `l`.
    fn fast_block(&mut self, l: usize, pc: usize) -> Block {
        let i = pc - self.loops[l].head;
        match self.loops[l].fast_blocks[i] {
            Some(b) => b,
            None => {
                let b = self.b.create_block();
                self.loops[l].fast_blocks[i] = Some(b);
                b
            }
        }
    }

    fn flush_seals(&mut self) {
        for block in std::mem::take(&mut self.to_seal) {
            self.b.seal_block(block);
        }
    }

    /// Translates the whole function and finalises the builder.
    pub fn translate(mut self) -> FunctionBuilder<'b> {
        let EbpfFunction { start, end, .. } = self.func;
        let insns = self.prog.insns();
        // Leaders: the entry, jump targets and the instruction after every jump or exit.
        // (Not for the jumps emitted as selects.)
        self.block_at(start);
        for (pc, &insn) in insns.iter().enumerate().take(end).skip(start) {
            if self.selects[pc - start] {
                continue;
            }
            if let Some(t) = insn.jump_target(pc) {
                self.block_at(t as usize);
            }
            if matches!(insn, Insn::Ja { .. } | Insn::Jump { .. } | Insn::Exit) && pc + 1 < end {
                self.block_at(pc + 1);
            }
        }
        // Predecessor edges of each leader: jumps to it, and falling into it.
        self.preds_left[0] += 1;
        let mut pc = start;
        while pc < end {
            let insn = insns[pc];
            let next = pc + if matches!(insn, Insn::Lddw { .. }) { 2 } else { 1 };
            if let Some(t) = insn.jump_target(pc).filter(|_| !self.selects[pc - start]) {
                self.preds_left[t as usize - start] += 1;
            }
            let falls_through = !matches!(insn, Insn::Ja { .. } | Insn::Exit);
            if falls_through && next < end && self.is_leader(next) {
                self.preds_left[next - start] += 1;
            }
            pc = next;
        }
        // Counted and walked loops get a fast copy; its exits are more edges into the blocks
        // after the loop.
        self.loops = self.versioned_loops();
        self.beside_entry = self.beside_entries();
        for &(_, t) in &self.beside_entry {
            if t < end {
                self.beside_target[t - start] = true;
            }
        }
        for l in 0..self.loops.len() {
            let (head, back_edge) = (self.loops[l].head, self.loops[l].last);
            for (pc, insn) in insns.iter().enumerate().take(back_edge + 1).skip(head) {
                if let Some(t) = insn.jump_target(pc).map(|t| t as usize).filter(|&t| t > back_edge && !self.selects[pc - start]) {
                    self.preds_left[t - start] += 1;
                }
            }
            if matches!(insns[back_edge], Insn::Jump { .. }) {
                self.preds_left[back_edge + 1 - start] += 1;
            }
        }
        self.context_guard();
        let entry = self.b.current_block().expect("entry block");
        self.b.seal_block(entry);
        let first = self.edge_to(start);
        self.b.ins().jump(first, &[]);
        self.flush_seals();
        self.emit_range(start, end);
        // What is emitted last may add more of each other (a fast copy's exit into another
        // counted loop): until none is left.
        loop {
            if let Some((charge, pc, target)) = self.back_edges.pop() {
                self.emit_back_edge(charge, pc, target);
            } else if let Some((block, pc, l)) = self.dispatches.pop() {
                self.emit_dispatch(block, pc, l);
            } else if let Some((block, src, target, l)) = self.fast_exits.pop() {
                self.b.switch_to_block(block);
                self.b.seal_block(block);
                if self.loops[l].charge == Charge::Settle {
                    self.settle_budget(l, src);
                }
                self.src = Some(src);
                let next = self.edge_to(target);
                self.b.ins().jump(next, &[]);
                self.flush_seals();
            } else if let Some(l) = self.loops.iter().position(|v| v.needed && !v.emitted) {
                self.emit_fast_copy(l);
            } else if let Some((block, l, pc, target)) = self.fast_latches.pop() {
                self.emit_fast_latch(block, l, pc, target);
            } else {
                break;
            }
        }
        self.b.switch_to_block(self.abort);
        let zero = self.iconst(0);
        self.b.ins().return_(&[zero]);
        self.b.seal_all_blocks();
        self.b
    }

    /// Emits slots `from..to` in order, each leader starting its block (the fast copy's
    /// while one is emitted). Returns whether the last instruction ended its block.
    fn emit_range(&mut self, from: usize, to: usize) -> bool {
        let insns = self.prog.insns();
        let mut terminated = true;
        let mut prev = None;
        let mut pc = from;
        while pc < to {
            if self.blocks[pc - self.func.start].is_some() {
                if !terminated {
                    self.src = prev;
                    let next = self.edge_to(pc);
                    self.b.ins().jump(next, &[]);
                    self.flush_seals();
                }
                let block = self.block_at(pc);
                if self.loop_exits[pc - self.func.start] && !self.beside_target[pc - self.func.start] {
                    self.b.set_cold_block(block);
                }
                self.b.switch_to_block(block);
            }
            self.src = Some(pc);
            terminated = self.emit(pc, insns[pc]);
            self.flush_seals();
            prev = Some(pc);
            // A jump emitted as a select took the operation after it too.
            pc += if matches!(insns[pc], Insn::Lddw { .. }) || self.selects[pc - self.func.start] { 2 } else { 1 };
        }
        terminated
    }

    /// The loops of this function given a fast copy: walked loops whose copy drops some
    /// check or settles the budget on the way out, else counted loops, else walked loops (whose
    /// copy drops the budget check alone).
    fn versioned_loops(&self) -> Vec<Versioned> {
        let EbpfFunction { start, end, .. } = self.func;
        let insns = self.prog.insns();
        // Longer loops are not compiled twice (see `MAX_LOOP_SLOTS`).
        let counted: Vec<_> = counted_loops(insns, start, end).into_iter().filter(|c| c.back_edge - c.head < MAX_LOOP_SLOTS).collect();
        let walked = if self.prog.walk_checks_on_entry() { walked_loops(insns, start, end, &|pc| self.prog.is_resolved(pc)) } else { vec![] };
        let observed = if walked.is_empty() && counted.is_empty() { vec![] } else { self.budget_observed() };
        let mut loops = vec![];
        for w in walked {
            let unchecked: Vec<usize> = w.walks.iter().map(|a| a.pc).filter(|&pc| !self.prog.access(pc).proven).collect();
            let settles = w.latches == 1
                && (w.head..=w.last).all(|pc| {
                    let insn = insns[pc];
                    let leaves = matches!(insn, Insn::Exit)
                        || insn.jump_target(pc).is_some_and(|t| !w.contains(t as usize))
                        || (pc == w.last && matches!(insn, Insn::Jump { .. }));
                    !leaves || w.counter_offsets[pc - w.head].is_some()
                });
            let charge = if self.budget_unobserved_after(&observed, w.head, w.last) {
                Charge::Unobserved
            } else if settles {
                Charge::Settle
            } else {
                Charge::PerLatch
            };
            // A counted loop's copy drops the same budget checks with a simpler guard; this
            // one's is worth it where it drops access checks or pays nothing per iteration.
            if unchecked.is_empty() && charge == Charge::PerLatch && counted.iter().any(|c| c.head == w.head) {
                continue;
            }
            loops.push(Versioned {
                head: w.head,
                last: w.last,
                guard: Guard::Walked(w),
                unchecked,
                charge,
                fast_blocks: vec![],
                needed: false,
                emitted: false,
            });
        }
        for c in counted {
            if loops.iter().any(|v| v.contains(c.head)) {
                continue;
            }
            let Some(cost) = c.max_cost() else { continue };
            loops.push(Versioned {
                head: c.head,
                last: c.back_edge,
                guard: Guard::Budget(cost),
                unchecked: vec![],
                charge: if self.budget_unobserved_after(&observed, c.head, c.back_edge) { Charge::Unobserved } else { Charge::PerLatch },
                fast_blocks: vec![],
                needed: false,
                emitted: false,
            });
        }
        for v in &mut loops {
            v.fast_blocks = vec![None; v.last - v.head + 1];
        }
        loops
    }

    /// By `pc - start`: whether a run at slot `pc` may still spend loop budget or let a caller,
    /// a helper or a callee look at what is left: a backward jump or a call is reachable from
    /// it, or this is not the program's entry function (a callee's caller, a callback's helper
    /// go on with the budget). Where not, what is left of the budget is never looked at again.
    fn budget_observed(&self) -> Vec<bool> {
        let EbpfFunction { start, end, callback } = self.func;
        let insns = self.prog.insns();
        let called = insns.iter().enumerate().any(|(pc, i)| matches!(i, Insn::Call(CallTarget::Local(off)) if pc as i64 + 1 + *off as i64 == 0));
        if start != 0 || callback || called {
            return vec![true; end - start];
        }
        // Backward from the slots that jump back or call, over the edges into each slot.
        let mut preds: Vec<Vec<usize>> = vec![vec![]; end - start];
        let mut observed = vec![false; end - start];
        let mut work = vec![];
        for (pc, insn) in insns.iter().enumerate().take(end).skip(start) {
            if matches!(insn, Insn::LddwHigh) {
                continue;
            }
            let target = insn.jump_target(pc).and_then(|t| usize::try_from(t).ok());
            if matches!(insn, Insn::Call(_) | Insn::CallReg(_)) || target.is_some_and(|t| t <= pc) {
                work.push(pc);
            }
            let next = pc + if matches!(insn, Insn::Lddw { .. }) { 2 } else { 1 };
            let falls = !matches!(insn, Insn::Ja { .. } | Insn::Exit);
            for t in target.into_iter().chain(falls.then_some(next)).filter(|&t| t < end) {
                preds[t - start].push(pc);
            }
        }
        while let Some(pc) = work.pop() {
            if !std::mem::replace(&mut observed[pc - start], true) {
                work.extend(preds[pc - start].iter().copied());
            }
        }
        observed
    }

    /// Whether, from the ways out of the loop `head..=last`, the budget is never looked at
    /// again (see [`Self::budget_observed`]).
    fn budget_unobserved_after(&self, observed: &[bool], head: usize, last: usize) -> bool {
        let insns = self.prog.insns();
        let start = self.func.start;
        (head..=last).filter(|&pc| !matches!(insns[pc], Insn::LddwHigh)).all(|pc| {
            let insn = insns[pc];
            let next = pc + if matches!(insn, Insn::Lddw { .. }) { 2 } else { 1 };
            let falls = !matches!(insn, Insn::Ja { .. } | Insn::Exit);
            let target = insn.jump_target(pc).and_then(|t| usize::try_from(t).ok());
            target
                .into_iter()
                .chain((falls && next > last).then_some(next))
                .filter(|&t| t < head || t > last)
                .all(|t| t >= start + observed.len() || !observed[t - start])
        })
    }

    /// The edges (source slot, target slot) of conditional jumps inside a loop whose other
    /// side goes to the loop's entry (a versioned loop's, else the head of a backward jump). The
    /// lowering lays blocks out in reverse postorder, placing the entry first, so such a
    /// branch is the loop's bottom: with the way out laid right after it, one branch goes
    /// back; with the way out moved away, a second one would be needed.
    fn beside_entries(&self) -> Vec<(usize, usize)> {
        let EbpfFunction { start, end, .. } = self.func;
        let insns = self.prog.insns();
        let target = |pc: usize| insns[pc].jump_target(pc).and_then(|t| usize::try_from(t).ok());
        // (first slot, last slot, entry) of every loop short enough to be looked at.
        let mut loops: Vec<(usize, usize, usize)> = self.loops.iter().map(|v| (v.head, v.last, v.entry())).collect();
        for (pc, _) in insns.iter().enumerate().take(end).skip(start) {
            if let Some(head) = target(pc).filter(|&h| h <= pc && h >= start && pc - h < MAX_LOOP_SLOTS) {
                if !self.loops.iter().any(|v| v.contains(head) && v.contains(pc)) {
                    loops.push((head, pc, head));
                }
            }
        }
        let mut beside = vec![];
        for (first, last, entry) in loops {
            for (pc, insn) in insns.iter().enumerate().take(last + 1).skip(first) {
                let (Insn::Jump { .. }, Some(taken)) = (insn, target(pc)) else { continue };
                if taken == entry {
                    beside.push((pc, pc + 1));
                }
                if pc + 1 == entry {
                    beside.push((pc, taken));
                }
            }
        }
        beside.sort_unstable();
        beside.dedup();
        beside
    }

    /// The copy of versioned loop `l` that subtracts its budget without checking it and skips
    /// the checks of its walks: entered only where its guard shows that they could not fail
    /// (see `bpftime_vm::loops` and `bpftime_vm::walks`). Its exits go to the blocks after the
    /// loop.
    fn emit_fast_copy(&mut self, l: usize) {
        self.loops[l].emitted = true;
        let (head, last) = (self.loops[l].head, self.loops[l].last);
        self.fast = Some(l);
        let terminated = self.emit_range(head, last + 1);
        debug_assert!(terminated, "a loop ends with its back edge");
        self.fast = None;
    }

    /// An entry into versioned loop `l` at `pc`: the fast copy when its guard holds, else the
    /// copy that checks.
    fn emit_dispatch(&mut self, block: Block, pc: usize, l: usize) {
        self.b.switch_to_block(block);
        self.b.seal_block(block);
        let enough = match &self.loops[l].guard {
            Guard::Budget(cost) => {
                let cost = *cost as i64;
                let budget = self.b.use_var(self.budget);
                self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, budget, cost)
            }
            Guard::Walked(w) => {
                let w = w.clone();
                let unchecked = self.loops[l].unchecked.clone();
                let ok = self.walked_guard(&w, &unchecked);
                if self.loops[l].charge == Charge::Settle {
                    let v0 = self.reg(w.test.counter);
                    self.b.def_var(self.entry_counter, v0);
                }
                ok
            }
        };
        let fast = self.fast_block(l, pc);
        self.loops[l].needed = true;
        // As if from inside the loop: its own block in the checking copy.
        self.src = Some(pc);
        let checking = self.edge_to(pc);
        self.b.ins().brif(enough, fast, &[], checking, &[]);
        self.flush_seals();
    }

    /// Whether walked loop `w`, entered with the registers' current values, may run its fast
    /// copy: the count of iterations going on is in range, the budget covers every iteration
    /// and each of the `unchecked` walks fits in one fast region. The same computation as
    /// [`WalkedLoop::iterations_going_on`] and [`bpftime_vm::walks::Walk::within`], in IR.
    fn walked_guard(&mut self, w: &WalkedLoop, unchecked: &[usize]) -> Value {
        let t = w.test;
        let v0 = self.reg(t.counter);
        let n = self.entry_sum(t.bound);
        let small_v = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThanOrEqual, v0, MAX_ENTRY_VALUE as i64);
        let small_n = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThanOrEqual, n, MAX_ENTRY_VALUE as i64);
        let mut ok = self.b.ins().band(small_v, small_n);
        // Iteration 0 compares `first = v0 + offset` with `n`; with both entry values below
        // 2^62, these are exact as signed 64-bit numbers (a negative `first` wrapped).
        let first = self.b.ins().iadd_imm_s(v0, t.offset);
        let c = t.step.unsigned_abs() as i64;
        let zero = self.iconst(0);
        let first_negative = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, first, 0);
        let ceil_div = |t: &mut Self, x: Value| {
            if c == 1 {
                x
            } else {
                let rounded = t.b.ins().iadd_imm_s(x, c - 1);
                t.b.ins().udiv_imm_s(rounded, c)
            }
        };
        let (going_on, bad) = match t.goes_on {
            GoesOn::Below | GoesOn::AtMost => {
                let n = self.b.ins().iadd_imm_s(n, (t.goes_on == GoesOn::AtMost) as i64);
                let reached = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, first, n);
                let none = self.b.ins().bor(first_negative, reached);
                let left = self.b.ins().isub(n, first);
                let k = ceil_div(self, left);
                (self.b.ins().select(none, zero, k), None)
            }
            GoesOn::Above | GoesOn::AtLeast => {
                // Going down: it must stop at or above zero, or it wraps and goes on.
                let n = self.b.ins().iadd_imm_s(n, -((t.goes_on == GoesOn::AtLeast) as i64));
                let n_negative = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, n, 0);
                let none = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, first, n);
                let over = self.b.ins().isub(first, n);
                let k = ceil_div(self, over);
                let k = self.b.ins().select(none, zero, k);
                let down = self.b.ins().imul_imm_s(k, c);
                let end = self.b.ins().isub(first, down);
                let wraps = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, end, 0);
                let bad = self.b.ins().bor(first_negative, n_negative);
                (k, Some(self.b.ins().bor(bad, wraps)))
            }
            GoesOn::NotEqual => {
                // It must meet the bound exactly, or it wraps and goes on.
                let gap = if t.step > 0 { self.b.ins().isub(n, first) } else { self.b.ins().isub(first, n) };
                let gap_negative = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, gap, 0);
                let mut bad = self.b.ins().bor(first_negative, gap_negative);
                let k = if c == 1 {
                    gap
                } else {
                    let rem = self.b.ins().urem_imm_s(gap, c);
                    let misses = self.b.ins().icmp_imm_s(IntCC::NotEqual, rem, 0);
                    bad = self.b.ins().bor(bad, misses);
                    self.b.ins().udiv_imm_s(gap, c)
                };
                (k, Some(bad))
            }
        };
        if let Some(bad) = bad {
            let good = self.b.ins().bxor_imm_s(bad, 1);
            ok = self.b.ins().band(ok, good);
        }
        let in_range = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, going_on, MAX_ITERATIONS as i64);
        ok = self.b.ins().band(ok, in_range);
        // The budget: every iteration may take a latch.
        let iterations = self.b.ins().iadd_imm_s(going_on, 1);
        let cost = self.b.ins().imul_imm_s(iterations, w.iteration_cost as i64);
        let budget = self.b.use_var(self.budget);
        let paid = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, budget, cost);
        ok = self.b.ins().band(ok, paid);
        for walk in w.walks.iter().filter(|a| unchecked.contains(&a.pc)) {
            // `runs - 1` addresses after the first; none at all when an access after the
            // test runs in no iteration.
            let (more, never) = if walk.after_test {
                let never = self.b.ins().icmp_imm_s(IntCC::Equal, going_on, 0);
                (self.b.ins().iadd_imm_s(going_on, -1), Some(never))
            } else {
                (going_on, None)
            };
            let span = self.b.ins().imul_imm_s(more, walk.stride.unsigned_abs() as i64);
            let first = self.entry_sum(walk.base);
            let order = fast_regions(self.prog.access(walk.pc).target);
            let table = if walk.write { so::FAST_STORE } else { so::FAST_LOAD };
            let mut fits = None;
            for &region in order {
                let region_off = table + region * so::FAST_REGION_SIZE;
                let start = self.b.ins().load(I64, fixed_state_flags(), self.state, region_off);
                let last = self.b.ins().load(I64, fixed_state_flags(), self.state, region_off + so::FAST_LAST + 8 * size_index(walk.size) as i32);
                let rel = self.b.ins().isub(first, start);
                let inside = if walk.stride >= 0 {
                    // rel + span <= last, without wrapping.
                    let room = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, span, last);
                    let rest = self.b.ins().isub(last, span);
                    let below = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, rel, rest);
                    self.b.ins().band(room, below)
                } else {
                    // span <= rel <= last.
                    let below = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, rel, last);
                    let above = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, rel, span);
                    self.b.ins().band(below, above)
                };
                fits = Some(match fits {
                    None => inside,
                    Some(f) => self.b.ins().bor(f, inside),
                });
            }
            let mut fits = fits.expect("at least one region");
            if let Some(never) = never {
                fits = self.b.ins().bor(fits, never);
            }
            ok = self.b.ins().band(ok, fits);
        }
        ok
    }

    /// The value of `sum` for the registers' current values.
    fn entry_sum(&mut self, sum: bpftime_vm::walks::EntrySum) -> Value {
        let mut v = self.iconst(sum.constant);
        for r in sum.regs.into_iter().flatten() {
            let x = self.reg(r);
            v = self.b.ins().iadd(v, x);
        }
        v
    }

    /// Where the fast copy of walked loop `l` leaves from slot `pc`: charges the budget for
    /// every latch taken since the loop was entered (see [`WalkedLoop::latches_taken`]).
    fn settle_budget(&mut self, l: usize, pc: usize) {
        let Guard::Walked(w) = &self.loops[l].guard else { unreachable!("only walked loops settle") };
        let d = w.counter_offsets[pc - w.head].expect("settling loops know their counter where they leave");
        let (counter, step, cost, past_latch) = (w.test.counter, w.test.step, w.iteration_cost, w.past_latch(pc));
        let v = self.reg(counter);
        let v0 = self.b.use_var(self.entry_counter);
        let delta = self.b.ins().isub(v, v0);
        let budget = self.b.use_var(self.budget);
        let cost = cost as i64;
        let left = if step.abs() == 1 {
            // `((delta - d) * step + past) * cost`, multiplied out so that the optimiser does
            // not fold the counter's last step into `delta` (which would keep the counter's
            // previous value alive across the loop's branch).
            let charge = self.b.ins().imul_imm_s(delta, cost.wrapping_mul(step));
            let left = self.b.ins().isub(budget, charge);
            self.b.ins().iadd_imm_s(left, (d.wrapping_mul(step) - past_latch as i64).wrapping_mul(cost))
        } else {
            let moved = self.b.ins().iadd_imm_s(delta, d.wrapping_neg());
            let moved = if step > 0 { moved } else { self.b.ins().ineg(moved) };
            let done = self.b.ins().udiv_imm_s(moved, step.abs());
            let taken = self.b.ins().iadd_imm_s(done, past_latch as i64);
            let charge = self.b.ins().imul_imm_s(taken, cost);
            self.b.ins().isub(budget, charge)
        };
        self.b.def_var(self.budget, left);
    }

    /// The pay block of a latch (the backward jump at `pc` to `target`) of loop `l`'s fast
    /// copy: pays the budget without checking it (the guard showed it covers the loop) and
    /// goes on at the target.
    fn emit_fast_latch(&mut self, block: Block, l: usize, pc: usize, target: usize) {
        self.b.switch_to_block(block);
        self.b.seal_block(block);
        let cost = back_edge_cost(target as i64 - pc as i64 - 1) as i64;
        let budget = self.b.use_var(self.budget);
        let left = self.b.ins().iadd_imm_s(budget, -cost);
        self.b.def_var(self.budget, left);
        let target = self.fast_block(l, target);
        self.b.ins().jump(target, &[]);
    }

    /// In the entry function of a program with proven context accesses: a run whose context
    /// does not meet their needs (too short, read-only, or not in r1) runs in the
    /// interpreter with every check instead.
    fn context_guard(&mut self) {
        let needs = self.prog.context_needs();
        if self.func.start != 0 || needs.len == 0 {
            return;
        }
        let flags = fixed_state_flags();
        let r1 = self.reg(Reg::new(1).expect("r1"));
        let start = self.b.ins().load(I64, flags, self.state, so::CTX_START);
        let len = self.b.ins().load(I64, flags, self.state, so::CTX_LEN);
        let elsewhere = self.b.ins().icmp(IntCC::NotEqual, r1, start);
        let short = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, len, needs.len as i64);
        let mut unmet = self.b.ins().bor(elsewhere, short);
        if needs.writable {
            let writable = self.b.ins().uload8(I32, flags, self.state, so::CTX_WRITABLE);
            let read_only = self.b.ins().icmp_imm_s(IntCC::Equal, writable, 0);
            unmet = self.b.ins().bor(unmet, read_only);
        }
        let slow = self.b.create_block();
        self.b.set_cold_block(slow);
        let cont = self.b.create_block();
        self.b.ins().brif(unmet, slow, &[], cont, &[]);
        let entry = self.b.current_block().expect("entry block");
        self.b.seal_block(entry);
        self.b.seal_block(slow);
        self.b.switch_to_block(slow);
        let f = self.import(Import::Fallback);
        let prog = self.import(Import::Program);
        let r2 = self.reg(Reg::new(2).expect("r2"));
        let call = self.b.ins().call_indirect(self.sigs.fallback, f, &[prog, self.state, r1, r2, self.fp]);
        let r0 = self.b.inst_results(call)[0];
        self.b.ins().return_(&[r0]);
        self.b.switch_to_block(cont);
    }

    /// Emits one instruction; returns whether it ended its block.
    fn emit(&mut self, pc: usize, insn: Insn) -> bool {
        match insn {
            Insn::Alu { width, op, dst, src } => self.alu(width, op, dst, src),
            Insn::Neg { width, dst } => {
                let v = self.dst_value(dst, width);
                let n = self.b.ins().ineg(v);
                self.set_width(dst, width, n);
            }
            Insn::Endian { order, bits, dst } => {
                let v = self.reg(dst);
                let r = match (order, bits) {
                    (_, 64) if order == ByteOrder::ToLe => v,
                    (_, 64) => self.b.ins().bswap(v),
                    (_, _) => {
                        let ty = if bits == 16 { I16 } else { I32 };
                        let narrow = self.b.ins().ireduce(ty, v);
                        let swapped = if order == ByteOrder::ToLe { narrow } else { self.b.ins().bswap(narrow) };
                        self.b.ins().uextend(I64, swapped)
                    }
                };
                self.set(dst, r);
            }
            Insn::Lddw { dst, kind: LddwKind::Func, lo, .. } => {
                let v = self.iconst(pc as i64 + 1 + lo as i64);
                self.set(dst, v);
            }
            Insn::Lddw { dst, .. } if self.prog.is_resolved(pc) => {
                let v = self.import(Import::MapRef(pc));
                self.set(dst, v);
            }
            Insn::Lddw { dst, lo, hi, .. } => {
                let v = self.iconst(((lo as u32 as u64) | ((hi as u32 as u64) << 32)) as i64);
                self.set(dst, v);
            }
            Insn::LddwHigh => unreachable!("skipped by the loop"),
            Insn::Load { size, signed, dst, base, off } => {
                let addr = self.checked_addr(pc, base, off, size, false);
                let f = mem_flags();
                let v = match (size, signed) {
                    (MemSize::DW, _) => self.b.ins().load(I64, f, addr, 0),
                    (MemSize::B, false) => self.b.ins().uload8(I64, f, addr, 0),
                    (MemSize::H, false) => self.b.ins().uload16(I64, f, addr, 0),
                    (MemSize::W, false) => self.b.ins().uload32(f, addr, 0),
                    (MemSize::B, true) => self.b.ins().sload8(I64, f, addr, 0),
                    (MemSize::H, true) => self.b.ins().sload16(I64, f, addr, 0),
                    (MemSize::W, true) => self.b.ins().sload32(f, addr, 0),
                };
                self.set(dst, v);
            }
            Insn::Store { .. } if self.dead_stores.contains(&pc) => {}
            Insn::Store { size, base, off, src } => {
                let addr = self.checked_addr(pc, base, off, size, true);
                let v = self.operand(src, Width::W64);
                let f = mem_flags();
                match size {
                    MemSize::DW => self.b.ins().store(f, v, addr, 0),
                    MemSize::W => self.b.ins().istore32(f, v, addr, 0),
                    MemSize::H => self.b.ins().istore16(f, v, addr, 0),
                    MemSize::B => self.b.ins().istore8(f, v, addr, 0),
                };
            }
            Insn::Atomic { size, op, fetch, base, off, src } => self.atomic(pc, size, op, fetch, base, off, src),
            Insn::Ja { off, .. } => {
                let target = (pc as i64 + 1 + off as i64) as usize;
                let block = self.branch_target(pc, target);
                self.b.ins().jump(block, &[]);
                return true;
            }
            Insn::Jump { width, cond, dst, src, off } => {
                let a = self.dst_value(dst, width);
                let c = match src {
                    Operand::Imm(i) if cond != JmpCond::Set => self.b.ins().icmp_imm_s(int_cc(cond), a, i as i64),
                    _ => {
                        let bv = self.operand(src, width);
                        if cond == JmpCond::Set {
                            let and = self.b.ins().band(a, bv);
                            self.b.ins().icmp_imm_s(IntCC::NotEqual, and, 0)
                        } else {
                            self.b.ins().icmp(int_cc(cond), a, bv)
                        }
                    }
                };
                if self.selects[pc - self.func.start] {
                    // Over one register operation: the operation, kept where the jump is not taken.
                    let Insn::Alu { width, op, dst, src } = self.prog.insns()[pc + 1] else { unreachable!("see select_skips") };
                    let before = self.reg(dst);
                    self.alu(width, op, dst, src);
                    let after = self.reg(dst);
                    let v = self.b.ins().select(c, before, after);
                    self.set(dst, v);
                    return false;
                }
                let target = (pc as i64 + 1 + off as i64) as usize;
                let taken = self.branch_target(pc, target);
                let fallthrough = self.edge_to(pc + 1);
                self.b.ins().brif(c, taken, &[], fallthrough, &[]);
                return true;
            }
            Insn::Call(CallTarget::Helper(id)) => match self.prog.inline_lookup(pc) {
                Some(layout) => self.inline_array_lookup(pc, layout),
                None => match self.prog.helpers().get(id) {
                    Some(helper) => {
                        let callee = self.import(Import::Helper(id));
                        if helper.effects.never_stops {
                            self.call_helper_raw(callee);
                        } else {
                            self.call_helper(pc, callee);
                        }
                    }
                    // A helper we lack: the verifier proved no run gets here.
                    None => {
                        let id = self.iconst(id as i64);
                        self.raise(pc, RAISE_UNKNOWN_HELPER, Some(id));
                        let after = self.b.create_block();
                        self.b.seal_block(after);
                        self.b.switch_to_block(after);
                    }
                },
            },
            Insn::CallReg(r) => {
                let id = self.reg(r);
                let callee = self.lookup_helper(pc, id);
                self.call_helper(pc, callee);
            }
            Insn::Call(CallTarget::Local(off)) => {
                let target = (pc as i64 + 1 + off as i64) as usize;
                let index = self.prog.function_starting_at(target).expect("verified call target");
                let func_ref = self.linker.function(&mut self.b, index);
                let fp = self.b.ins().iadd_imm_s(self.fp, -(FRAME_SIZE as i64));
                let mut args = vec![self.state, fp];
                for r in 1..=5 {
                    args.push(self.reg(Reg::new(r).expect("r1-r5")));
                }
                self.save_budget();
                let call = self.b.ins().call(func_ref, &args);
                let r0 = self.b.inst_results(call)[0];
                self.set(Reg::R0, r0);
                self.reload_budget();
                self.abort_if_stopped(None);
            }
            Insn::Call(CallTarget::Kfunc(_)) => unreachable!("verifier rejects kfuncs"),
            Insn::Exit => {
                if let Some(l) = self.fast.filter(|&l| self.loops[l].charge == Charge::Settle) {
                    self.settle_budget(l, pc);
                }
                self.save_budget();
                let r0 = self.reg(Reg::R0);
                self.b.ins().return_(&[r0]);
                return true;
            }
        }
        false
    }

    /// The block a jump from `pc` to `target` goes to: the target itself, or for a backward
    /// jump a block (emitted after the function body) that first charges the loop budget.
    fn branch_target(&mut self, pc: usize, target: usize) -> Block {
        if target > pc {
            return self.edge_to(target);
        }
        if let Some(l) = self.fast {
            // A latch of a fast copy: straight to its head where the budget is settled on the
            // way out, else through a block that pays without checking.
            if self.loops[l].charge != Charge::PerLatch {
                return self.fast_block(l, target);
            }
            let pay = self.b.create_block();
            self.fast_latches.push((pay, l, pc, target));
            return pay;
        }
        let charge = self.b.create_block();
        self.back_edges.push((charge, pc, target));
        charge
    }

    /// Emits a back-edge block: take the loop's cost from the budget, or fault when it cannot pay.
    fn emit_back_edge(&mut self, charge: Block, pc: usize, target_pc: usize) {
        self.src = Some(pc);
        let exhausted = self.b.create_block();
        let pay = self.b.create_block();
        self.b.set_cold_block(exhausted);
        self.b.seal_block(charge);
        let target = self.edge_to(target_pc);
        self.b.switch_to_block(charge);
        // The loop closed by this jump: slots `target_pc..=pc` (see `exec::back_edge_cost`).
        let cost = back_edge_cost(target_pc as i64 - pc as i64 - 1) as i64;
        let budget = self.b.use_var(self.budget);
        if cost == 1 {
            self.b.ins().brif(budget, pay, &[], exhausted, &[]);
        } else {
            let enough = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, budget, cost);
            self.b.ins().brif(enough, pay, &[], exhausted, &[]);
        }
        self.b.seal_block(exhausted);
        self.b.seal_block(pay);
        self.b.switch_to_block(pay);
        let left = self.b.ins().iadd_imm_s(budget, -cost);
        self.b.def_var(self.budget, left);
        self.b.ins().jump(target, &[]);
        self.flush_seals();
        self.b.switch_to_block(exhausted);
        self.raise(pc, RAISE_LOOP_BUDGET, None);
    }

    /// Writes the register-held budget back to `RunState` (before calls and returns).
    fn save_budget(&mut self) {
        if !self.tracks_budget {
            return;
        }
        let left = self.b.use_var(self.budget);
        self.b.ins().store(MemFlagsData::trusted(), left, self.state, so::BUDGET);
    }

    /// Reloads the budget after a call, which may have spent some.
    fn reload_budget(&mut self) {
        if !self.tracks_budget {
            return;
        }
        let left = self.b.ins().load(I64, MemFlagsData::trusted(), self.state, so::BUDGET);
        self.b.def_var(self.budget, left);
    }

    /// Calls the runtime to record a fault (or locate one), then leaves through `abort`.
    fn raise(&mut self, pc: usize, what: u64, arg: Option<Value>) {
        let f = self.import(Import::Raise);
        let pc_v = self.iconst(pc as i64);
        let what_v = self.iconst(what as i64);
        let arg = arg.unwrap_or_else(|| self.iconst(0));
        self.b.ins().call_indirect(self.sigs.raise, f, &[self.state, pc_v, what_v, arg]);
        self.b.ins().jump(self.abort, &[]);
    }

    /// After a call: if the run was stopped or faulted, return at once.
    fn abort_if_stopped(&mut self, locate_pc: Option<usize>) {
        let status = self.b.ins().load(I32, MemFlagsData::trusted(), self.state, so::STATUS);
        let cont = self.b.create_block();
        let stop = match locate_pc {
            None => self.abort,
            Some(_) => {
                let b = self.b.create_block();
                self.b.set_cold_block(b);
                b
            }
        };
        self.b.ins().brif(status, stop, &[], cont, &[]);
        self.b.seal_block(cont);
        if let Some(pc) = locate_pc {
            self.b.seal_block(stop);
            self.b.switch_to_block(stop);
            self.raise(pc, RAISE_LOCATE, None);
        }
        self.b.switch_to_block(cont);
    }

    /// A helper call that may stop the run: the budget goes with it, the status is checked after.
    fn call_helper(&mut self, pc: usize, callee: Value) {
        self.save_budget();
        self.call_helper_raw(callee);
        self.reload_budget();
        self.abort_if_stopped(Some(pc));
    }

    /// `r0 = callee(r1..r5, state)`; alone, the call of a helper that never stops the run (no
    /// budget to hand over, no status to look at afterwards).
    fn call_helper_raw(&mut self, callee: Value) {
        let mut args = Vec::with_capacity(6);
        for r in 1..=5 {
            args.push(self.reg(Reg::new(r).expect("r1-r5")));
        }
        args.push(self.state);
        let call = self.b.ins().call_indirect(self.sigs.helper, callee, &args);
        let r0 = self.b.inst_results(call)[0];
        self.set(Reg::R0, r0);
    }

    /// `r0 = bpf_map_lookup_elem(array, r2)` without the helper: the key is a proven-readable
    /// `u32`, the value's address is `values + key * stride` (plus this CPU's copy's offset for
    /// a per-CPU array) below `max_entries`, else null. A key the verifier knows gives a fixed
    /// address (or null) without reading it.
    fn inline_array_lookup(&mut self, pc: usize, layout: ArrayLayout) {
        let known = self.prog.lookup_key(pc);
        if known.is_some_and(|k| k >= layout.max_entries) {
            // A constant key past the end: always null.
            let null = self.iconst(0);
            self.set(Reg::R0, null);
            return;
        }
        let (inside, offset) = match known {
            // A constant key inside: a fixed offset (its value's address, once imported).
            Some(k) => (None, self.iconst(k as i64 * layout.stride as i64)),
            None => {
                let key_ptr = self.reg(Reg::new(2).expect("r2"));
                let key = self.b.ins().uload32(mem_flags(), key_ptr, 0);
                let inside = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, key, layout.max_entries as i64);
                (Some(inside), self.b.ins().imul_imm_s(key, layout.stride as i64))
            }
        };
        let values = self.import(Import::ArrayValues(pc));
        let mut addr = self.b.ins().iadd(offset, values);
        if layout.cpu != 0 {
            // A per-CPU array: this CPU's copy.
            let cpu = match self.cpu {
                Some(cpu) => cpu,
                None => {
                    let f = self.import(Import::ArrayCpu(pc));
                    let call = self.b.ins().call_indirect(self.sigs.cpu, f, &[]);
                    self.b.inst_results(call)[0]
                }
            };
            let cpu_offset = self.b.ins().imul_imm_s(cpu, layout.cpu_stride as i64);
            addr = self.b.ins().iadd(addr, cpu_offset);
        }
        let r0 = match inside {
            Some(inside) => {
                let null = self.iconst(0);
                self.b.ins().select(inside, addr, null)
            }
            None => addr,
        };
        self.set(Reg::R0, r0);
    }

    /// `callx`: the helper function for the id in a register, or a fault.
    fn lookup_helper(&mut self, pc: usize, id: Value) -> Value {
        let unknown = self.b.create_block();
        self.b.set_cold_block(unknown);
        let in_range = self.b.create_block();
        let found = self.b.create_block();
        let n = self.b.ins().load(I64, fixed_state_flags(), self.state, so::NHELPERS);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, id, n);
        self.b.ins().brif(ok, in_range, &[], unknown, &[]);
        self.b.seal_block(in_range);
        self.b.switch_to_block(in_range);
        let table = self.b.ins().load(I64, fixed_state_flags(), self.state, so::HELPERS);
        let offset = self.b.ins().imul_imm_s(id, 8);
        let slot = self.b.ins().iadd(table, offset);
        let f = self.b.ins().load(I64, MemFlagsData::trusted().with_readonly(), slot, 0);
        self.b.ins().brif(f, found, &[], unknown, &[]);
        self.b.seal_block(found);
        self.b.seal_block(unknown);
        self.b.switch_to_block(unknown);
        self.raise(pc, RAISE_UNKNOWN_HELPER, Some(id));
        self.b.switch_to_block(found);
        f
    }

    /// The address `base + off`, checked unless the verifier proved it in bounds.
    ///
    /// Inline: `addr - start <= last` against the region the verifier says the pointer comes
    /// from, or against the context, the first extra region and the stack when it does not
    /// know. Out of line: the runtime checks every region; it is called without clobbering
    /// any register (see `runtime_calls`), and records a fault in `RunState`.
    fn checked_addr(&mut self, pc: usize, base_reg: Reg, off: i16, size: MemSize, write: bool) -> Value {
        let base = self.reg(base_reg);
        let addr = if off != 0 { self.b.ins().iadd_imm_s(base, off as i64) } else { base };
        let access = self.prog.access(pc);
        if access.proven || self.fast.is_some_and(|l| self.loops[l].unchecked.contains(&pc)) {
            return addr;
        }
        let ok = self.b.create_block();
        let slow = self.b.create_block();
        self.b.set_cold_block(slow);
        // A fault-tolerant load (through a BTF pointer) goes on at `ok` with the address to
        // read, which the slow path may replace with that of a zero (see `jit_check_access`).
        let probe = access.probe && !write;
        let addr_arg = [cranelift_codegen::ir::BlockArg::Value(addr)];
        let ok_args: &[cranelift_codegen::ir::BlockArg] = if probe { &addr_arg } else { &[] };
        let checked = if probe { self.b.append_block_param(ok, I64) } else { addr };
        // Where the verifier knows which region the pointer comes from, only that one is
        // checked inline (the slow path checks them all); otherwise all three, the context first.
        let order = fast_regions(access.target);
        let table = if write { so::FAST_STORE } else { so::FAST_LOAD };
        for (i, &region) in order.iter().enumerate() {
            // Bounds are loaded at each check (x86 folds them into the sub and cmp): they cost
            // no registers in loops. The likeliest region comes first, so the usual cost is
            // one sub, one cmp and one predicted branch.
            let region_off = table + region * so::FAST_REGION_SIZE;
            let flags = if self.hoist_bounds { fixed_state_flags().with_can_move() } else { fixed_state_flags() };
            let start = self.b.ins().load(I64, flags, self.state, region_off);
            let last_off = region_off + so::FAST_LAST + 8 * size_index(size) as i32;
            let last = self.b.ins().load(I64, flags, self.state, last_off);
            let rel = self.b.ins().isub(addr, start);
            let inside = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, rel, last);
            let next = if i + 1 < order.len() { self.b.create_block() } else { slow };
            self.b.ins().brif(inside, ok, ok_args, next, &[]);
            self.b.seal_block(next);
            self.b.switch_to_block(next);
        }
        // The access goes to the check through the state: no argument registers are taken
        // from the hot path.
        let what = self.iconst(size.bytes() as i64 | if write { 1 << 8 } else { 0 } | if probe { 1 << 9 } else { 0 } | (pc as i64) << 16);
        self.b.ins().store(MemFlagsData::trusted(), addr, self.state, so::CHECK_ADDR);
        self.b.ins().store(MemFlagsData::trusted(), what, self.state, so::CHECK_WHAT);
        let f = self.import(Import::CheckAccess);
        self.b.ins().call_indirect(self.sigs.check, f, &[self.state]);
        if probe {
            let to_read = self.b.ins().load(I64, MemFlagsData::trusted(), self.state, so::CHECK_ADDR);
            self.b.ins().jump(ok, &[cranelift_codegen::ir::BlockArg::Value(to_read)]);
        } else {
            let status = self.b.ins().load(I32, MemFlagsData::trusted(), self.state, so::STATUS);
            self.b.ins().brif(status, self.abort, &[], ok, &[]);
        }
        self.b.seal_block(ok);
        self.b.switch_to_block(ok);
        checked
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(&mut self, pc: usize, size: MemSize, op: AtomicOp, fetch: bool, base: Reg, off: i16, src: Reg) {
        let addr = self.checked_addr(pc, base, off, size, true);
        let misaligned = self.b.create_block();
        self.b.set_cold_block(misaligned);
        let aligned = self.b.create_block();
        let low = self.b.ins().band_imm_s(addr, size.bytes() as i64 - 1);
        self.b.ins().brif(low, misaligned, &[], aligned, &[]);
        self.b.seal_block(misaligned);
        self.b.seal_block(aligned);
        self.b.switch_to_block(misaligned);
        self.raise(pc, RAISE_MISALIGNED | (size.bytes() as u64) << 8, Some(addr));
        self.b.switch_to_block(aligned);

        let ty = int_type(size);
        let narrow = |t: &mut Self, v: Value| if ty == I64 { v } else { t.b.ins().ireduce(ty, v) };
        let widen = |t: &mut Self, v: Value| if ty == I64 { v } else { t.b.ins().uextend(I64, v) };
        let flags = MemFlagsData::new().with_notrap();
        let x = self.reg(src);
        let x = narrow(self, x);
        if op == AtomicOp::CmpXchg {
            let expected = self.reg(Reg::R0);
            let expected = narrow(self, expected);
            let old = self.b.ins().atomic_cas(flags, addr, expected, x);
            let old = widen(self, old);
            self.set(Reg::R0, old);
            return;
        }
        let rmw = match op {
            AtomicOp::Add => AtomicRmwOp::Add,
            AtomicOp::Or => AtomicRmwOp::Or,
            AtomicOp::And => AtomicRmwOp::And,
            AtomicOp::Xor => AtomicRmwOp::Xor,
            AtomicOp::Xchg => AtomicRmwOp::Xchg,
            AtomicOp::CmpXchg => unreachable!(),
        };
        let old = self.b.ins().atomic_rmw(ty, flags, rmw, addr, x);
        if fetch {
            let old = widen(self, old);
            self.set(src, old);
        }
    }

    fn alu(&mut self, width: Width, op: AluOp, dst: Reg, src: Operand) {
        let ty = if width == Width::W64 { I64 } else { I32 };
        let bits = if width == Width::W64 { 64 } else { 32 };
        match op {
            AluOp::Mov => {
                let v = self.operand(src, width);
                return self.set_width(dst, width, v);
            }
            AluOp::MovSx8 | AluOp::MovSx16 | AluOp::MovSx32 => {
                let from = match op {
                    AluOp::MovSx8 => I8,
                    AluOp::MovSx16 => I16,
                    _ => I32,
                };
                let v = self.operand(src, Width::W64);
                let narrow = self.b.ins().ireduce(from, v);
                let r = self.b.ins().sextend(ty, narrow);
                return self.set_width(dst, width, r);
            }
            AluOp::Div | AluOp::Mod | AluOp::SDiv | AluOp::SMod => {
                let a = self.dst_value(dst, width);
                let r = self.division(op, ty, a, src, width);
                return self.set_width(dst, width, r);
            }
            _ => {}
        }
        let a = self.dst_value(dst, width);
        let r = match src {
            Operand::Imm(i) => {
                let imm = i as i64;
                let ins = self.b.ins();
                match op {
                    AluOp::Add => ins.iadd_imm_s(a, imm),
                    AluOp::Sub => ins.iadd_imm_s(a, imm.wrapping_neg()),
                    AluOp::Mul => ins.imul_imm_s(a, imm),
                    AluOp::Or => ins.bor_imm_s(a, imm),
                    AluOp::And => ins.band_imm_s(a, imm),
                    AluOp::Xor => ins.bxor_imm_s(a, imm),
                    AluOp::Lsh => ins.ishl_imm_s(a, imm & (bits - 1)),
                    AluOp::Rsh => ins.ushr_imm_s(a, imm & (bits - 1)),
                    AluOp::Arsh => ins.sshr_imm_s(a, imm & (bits - 1)),
                    _ => unreachable!("handled above"),
                }
            }
            Operand::Reg(_) => {
                let b = self.operand(src, width);
                let ins = self.b.ins();
                match op {
                    AluOp::Add => ins.iadd(a, b),
                    AluOp::Sub => ins.isub(a, b),
                    AluOp::Mul => ins.imul(a, b),
                    AluOp::Or => ins.bor(a, b),
                    AluOp::And => ins.band(a, b),
                    AluOp::Xor => ins.bxor(a, b),
                    // Cranelift shifts take the amount modulo the width, as eBPF does.
                    AluOp::Lsh => ins.ishl(a, b),
                    AluOp::Rsh => ins.ushr(a, b),
                    AluOp::Arsh => ins.sshr(a, b),
                    _ => unreachable!("handled above"),
                }
            }
        };
        self.set_width(dst, width, r);
    }

    /// Division and modulo with eBPF's rules for zero and for `MIN / -1`.
    fn division(&mut self, op: AluOp, ty: Type, a: Value, src: Operand, width: Width) -> Value {
        let signed = matches!(op, AluOp::SDiv | AluOp::SMod);
        let is_div = matches!(op, AluOp::Div | AluOp::SDiv);
        if let Operand::Imm(i) = src {
            let imm = if width == Width::W32 { i as u32 as i64 } else { i as i64 };
            if i == 0 {
                return if is_div { self.b.ins().iconst(ty, 0) } else { a };
            }
            if signed && i == -1 {
                return if is_div { self.b.ins().ineg(a) } else { self.b.ins().iconst(ty, 0) };
            }
            let d = self.b.ins().iconst(ty, imm);
            let ins = self.b.ins();
            return match op {
                AluOp::Div => ins.udiv(a, d),
                AluOp::Mod => ins.urem(a, d),
                AluOp::SDiv => ins.sdiv(a, d),
                _ => ins.srem(a, d),
            };
        }
        let b = self.operand(src, width);
        let one = self.b.ins().iconst(ty, 1);
        let zero = self.b.ins().iconst(ty, 0);
        let is_zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        if !signed {
            let safe = self.b.ins().select(is_zero, one, b);
            return if is_div {
                let q = self.b.ins().udiv(a, safe);
                self.b.ins().select(is_zero, zero, q)
            } else {
                let r = self.b.ins().urem(a, safe);
                self.b.ins().select(is_zero, a, r)
            };
        }
        let is_neg_one = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let special = self.b.ins().bor(is_zero, is_neg_one);
        let safe = self.b.ins().select(special, one, b);
        if is_div {
            let q = self.b.ins().sdiv(a, safe);
            let neg = self.b.ins().ineg(a);
            let q = self.b.ins().select(is_neg_one, neg, q);
            self.b.ins().select(is_zero, zero, q)
        } else {
            let r = self.b.ins().srem(a, safe);
            let r = self.b.ins().select(is_neg_one, zero, r);
            self.b.ins().select(is_zero, a, r)
        }
    }
}

/// The fast regions (indices in `RunState`'s tables) an access to `target` may touch, likeliest
/// first: the one the verifier names, or all three, the context first.
fn fast_regions(target: Target) -> &'static [i32] {
    match target {
        Target::Stack => &[0],
        Target::Context => &[1],
        Target::Memory => &[2],
        Target::Unknown => &[1, 2, 0],
    }
}

/// By `pc - start`, for the slots `start..end` of `insns`: the conditional jumps over exactly
/// one cheap register operation (a move, add, subtract, logic or shift: what clang leaves as a
/// branch where the eBPF ISA has no conditional move) that nothing else jumps to. Each is
/// emitted as the operation and a `select` (a `cmov`): no branch to mispredict on data, as a
/// native compiler would emit it (`log2`'s bit scan over random values: one branch per step).
fn select_skips(insns: &[Insn], start: usize, end: usize) -> Vec<bool> {
    let mut targeted = vec![false; end - start];
    for (pc, insn) in insns.iter().enumerate().take(end).skip(start) {
        if let Some(t) = insn.jump_target(pc).map(|t| t as usize).filter(|&t| t >= start && t < end) {
            targeted[t - start] = true;
        }
    }
    (start..end)
        .map(|pc| {
            matches!(insns[pc], Insn::Jump { off: 1, .. })
                && pc + 1 < end
                && !targeted[pc + 1 - start]
                && matches!(
                    insns[pc + 1],
                    Insn::Alu { op: AluOp::Mov | AluOp::Add | AluOp::Sub | AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Lsh | AluOp::Rsh | AluOp::Arsh, .. }
                )
        })
        .collect()
}

fn int_cc(c: JmpCond) -> IntCC {
    match c {
        JmpCond::Eq => IntCC::Equal,
        JmpCond::Ne => IntCC::NotEqual,
        JmpCond::Gt => IntCC::UnsignedGreaterThan,
        JmpCond::Ge => IntCC::UnsignedGreaterThanOrEqual,
        JmpCond::Lt => IntCC::UnsignedLessThan,
        JmpCond::Le => IntCC::UnsignedLessThanOrEqual,
        JmpCond::Sgt => IntCC::SignedGreaterThan,
        JmpCond::Sge => IntCC::SignedGreaterThanOrEqual,
        JmpCond::Slt => IntCC::SignedLessThan,
        JmpCond::Sle => IntCC::SignedLessThanOrEqual,
        JmpCond::Set => unreachable!("jset is a band"),
    }
}
