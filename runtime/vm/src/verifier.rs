//! The verifier: checks what can be known before a program runs, and produces a [`Program`].
//!
//! It rejects, naming the instruction index and the reason: undecodable slots, writes to r10,
//! jumps out of range, into the middle of an `lddw` or out of their function, code that falls
//! off the end of a function, calls to unknown helpers (where a run may reach them: see
//! [`crate::analysis::Analysis::reachable`]), kfuncs, bad local-call targets, stack
//! accesses through r10 outside the 512-byte frame, recursion and call chains deeper than
//! [`MAX_CALL_DEPTH`]. Then its range analysis ([`crate::analysis`]) proves what accesses it
//! can in bounds; the engines check the others at run time ([`Checks::All`] keeps every check).
//!
//! It does not prove termination: the engines bound backward jumps with a budget instead. It
//! refuses only loops with no way out at all, which the kernel's verifier never gets through
//! either (`for (;;)` with no break).

use crate::analysis::{self, Access, Pointee};
use crate::exec::{HelperTable, FRAME_SIZE, MAX_CALL_DEPTH};
use crate::insn::{decode, parse_bytecode, CallTarget, DecodeErrorKind, Insn, LddwKind, RawInsn, Reg};
use crate::program::{Function, Program};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest program accepted, in slots (the kernel's limit for privileged programs).
pub const MAX_INSNS: usize = 1_000_000;

/// What is wrong with a program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyErrorKind {
    #[error("{0}")]
    Decode(DecodeErrorKind),
    #[error("program is empty")]
    Empty,
    #[error("program has {0} instructions, more than {MAX_INSNS}")]
    TooLarge(usize),
    #[error("r10 is read-only")]
    WriteToFramePointer,
    #[error("jump to {target} is out of range")]
    JumpOutOfRange { target: i64 },
    #[error("jump to {target} lands in the middle of lddw")]
    JumpIntoLddw { target: i64 },
    #[error("jump to {target} leaves the function [{start}, {end})")]
    JumpOutOfFunction { target: i64, start: usize, end: usize },
    #[error("execution can fall off the end of the function")]
    FallsOffEnd,
    #[error("r{reg} is read before any path sets it (the kernel refuses it too: \"R{reg} !read_ok\")")]
    UninitRegister { reg: u8 },
    #[error("a write into the context, which this program type may only read (the kernel refuses it too)")]
    ContextWrite,
    #[error("call to unknown helper {0}")]
    UnknownHelper(u32),
    #[error("helper {helper} takes a key, and this map has none (key size 0: a queue, stack or bloom filter, which bpf_map_peek_elem, bpf_map_push_elem and bpf_map_pop_elem reach); the kernel refuses it too (\"invalid zero-sized read\")")]
    KeylessMap { helper: u32 },
    #[error("kfunc calls are not supported (btf id {0})")]
    Kfunc(u32),
    #[error("local call to {target} is out of range or into lddw")]
    BadCallTarget { target: i64 },
    #[error("stack access r10{off:+} of {size} bytes is outside the {FRAME_SIZE}-byte frame")]
    StackOutOfBounds { off: i16, size: usize },
    #[error("recursive local call")]
    Recursion,
    #[error("no path from here reaches an exit: the loop never ends (the kernel refuses it too: {})", if *.changes_state { "\"BPF program is too large\", after exploring it a million instructions" } else { "\"infinite loop detected\"" })]
    NeverExits {
        /// Whether the loop does more than jump (the kernel then explores it until its
        /// instruction limit, `E2BIG`; else it sees a state repeat, `EINVAL`).
        changes_state: bool,
    },
    #[error("call chain is {depth} frames deep, more than {MAX_CALL_DEPTH}")]
    CallChainTooDeep { depth: usize },
    #[error("cannot resolve lddw ({kind:?}): {msg}")]
    Unresolved { kind: LddwKind, msg: String },
}

/// A verification error and the index of the instruction it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insn {insn}: {kind}")]
pub struct VerifyError {
    /// Instruction (slot) index.
    pub insn: usize,
    /// What is wrong.
    pub kind: VerifyErrorKind,
}

/// Resolves the pseudo forms of `lddw` (map references, ...) into the values programs see.
pub trait LddwResolver {
    /// The 64-bit value for an `lddw` of `kind` with immediates `lo` and `hi`.
    fn resolve(&self, kind: LddwKind, lo: i32, hi: i32) -> Result<u64, String>;

    /// What the resolved value points to, for the range analysis: a map whose lookups return
    /// whole values, or a map value. None (the default) proves nothing about its uses.
    fn pointee(&self, _kind: LddwKind, _lo: i32, _hi: i32) -> Option<Pointee> {
        None
    }
}

/// Which memory checks the engines keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checks {
    /// Only those of accesses the range analysis could not prove in bounds.
    #[default]
    Unproven,
    /// Every one (for comparison, and for distrust).
    All,
}

impl std::str::FromStr for Checks {
    type Err = String;

    /// `unproven` or `all` (as `--checks` and `BPFTIME_CHECKS` spell them).
    fn from_str(s: &str) -> Result<Checks, String> {
        match s {
            "unproven" => Ok(Checks::Unproven),
            "all" => Ok(Checks::All),
            other => Err(format!("`{other}`: expected `unproven` or `all`")),
        }
    }
}

/// A resolver for programs without maps: every pseudo form is an error.
pub struct NoMaps;

impl LddwResolver for NoMaps {
    fn resolve(&self, _kind: LddwKind, _lo: i32, _hi: i32) -> Result<u64, String> {
        Err("this program refers to maps, and no map store was given".into())
    }
}

fn err(insn: usize, kind: VerifyErrorKind) -> VerifyError {
    VerifyError { insn, kind }
}

/// Decodes and verifies bytecode.
pub fn verify_bytecode(bytes: &[u8], helpers: Arc<HelperTable>, resolver: &dyn LddwResolver) -> Result<Program, VerifyError> {
    let raw = parse_bytecode(bytes).map_err(|e| err(e.insn, VerifyErrorKind::Decode(e.kind)))?;
    verify(&raw, helpers, resolver)
}

/// Verifies a program given as slots, keeping only the run-time checks of accesses it
/// cannot prove in bounds.
pub fn verify(raw: &[RawInsn], helpers: Arc<HelperTable>, resolver: &dyn LddwResolver) -> Result<Program, VerifyError> {
    verify_with(raw, helpers, resolver, Checks::Unproven)
}

/// Verifies a program given as slots, keeping the run-time checks `checks` says.
pub fn verify_with(raw: &[RawInsn], helpers: Arc<HelperTable>, resolver: &dyn LddwResolver, checks: Checks) -> Result<Program, VerifyError> {
    if raw.is_empty() {
        return Err(err(0, VerifyErrorKind::Empty));
    }
    if raw.len() > MAX_INSNS {
        return Err(err(0, VerifyErrorKind::TooLarge(raw.len())));
    }
    let mut insns = decode(raw).map_err(|e| err(e.insn, VerifyErrorKind::Decode(e.kind)))?;
    let n = insns.len();
    let is_insn_start = |insns: &[Insn], t: i64| t >= 0 && (t as usize) < n && !matches!(insns[t as usize], Insn::LddwHigh);

    // Resolve pseudo lddw forms and find function starts.
    let mut starts = vec![0usize];
    let mut callbacks = vec![];
    let mut pointees = HashMap::new();
    let mut resolved = vec![];
    for pc in 0..n {
        match insns[pc] {
            Insn::Lddw { dst, kind: LddwKind::Func, lo, .. } => {
                let target = pc as i64 + 1 + lo as i64;
                if !is_insn_start(&insns, target) {
                    return Err(err(pc, VerifyErrorKind::BadCallTarget { target }));
                }
                let _ = dst;
                starts.push(target as usize);
                callbacks.push(target as usize);
            }
            Insn::Lddw { kind, .. } if kind != LddwKind::Imm64 => {
                resolved.push(pc);
                if let Some(p) = resolve_lddw(&mut insns, pc, resolver)? {
                    pointees.insert(pc, p);
                }
            }
            Insn::Call(CallTarget::Local(off)) => {
                let target = pc as i64 + 1 + off as i64;
                if !is_insn_start(&insns, target) {
                    return Err(err(pc, VerifyErrorKind::BadCallTarget { target }));
                }
                starts.push(target as usize);
            }
            _ => {}
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let functions: Vec<Function> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| Function { start, end: starts.get(i + 1).copied().unwrap_or(n), callback: callbacks.contains(&start) })
        .collect();

    // Calls to helpers we do not have are refused only where a run may reach them: libbpf
    // leaves such calls (its "poison") in code behind branches on constants, where a CO-RE
    // relocation found nothing or a map was not created, and counts on the verifier to
    // prove that code dead, as the kernel's does.
    let mut unknown_calls = vec![];
    for f in &functions {
        for pc in f.start..f.end {
            check_insn(&insns, pc, f, &helpers, &mut unknown_calls)?;
        }
        let last = f.end - 1;
        if !matches!(insns[last], Insn::Exit | Insn::Ja { .. }) {
            return Err(err(last, VerifyErrorKind::FallsOffEnd));
        }
    }
    let depths = check_call_graph(&insns, &functions)?;
    let mut proofs = analysis::analyze(&insns, &functions, &helpers, &pointees, &resolved);
    if let Some(&(pc, id)) = unknown_calls.iter().find(|&&(pc, _)| proofs.reachable[pc]) {
        return Err(err(pc, VerifyErrorKind::UnknownHelper(id)));
    }
    if let Some(&(pc, helper)) = proofs.keyless_map_calls.first() {
        return Err(err(pc, VerifyErrorKind::KeylessMap { helper }));
    }
    if let Some((pc, changes_state)) = first_trap(&insns, &functions, &helpers, &proofs.reachable, &proofs.reach_known) {
        return Err(err(pc, VerifyErrorKind::NeverExits { changes_state }));
    }
    if checks == Checks::All {
        proofs.access.iter_mut().for_each(|a| *a = Access { proven: false, aligned: false, ..*a });
        proofs.ctx = Default::default();
        proofs.ctx_reads = None;
        proofs.helper_args.clear();
        proofs.inline_lookups.clear();
        proofs.lookup_keys.clear();
        proofs.walk_checks_on_entry = false;
    }
    Ok(Program::new(insns, functions, depths, proofs, pointees, resolved, helpers))
}

/// The first instruction a run may reach from which no path leads to an `exit`: a loop with no
/// way out (`for (;;)`), which the kernel's verifier never finishes exploring and refuses. Only
/// such loops: one whose way out a run never takes is bounded by the loop budget instead.
/// A helper that may end the run (a tail call, a GPU thread's exit: see
/// [`crate::exec::HelperEffects::never_stops`]) counts as a way out. Also whether anything there
/// does more than jump.
fn first_trap(insns: &[Insn], functions: &[Function], helpers: &HelperTable, reachable: &[bool], reach_known: &[bool]) -> Option<(usize, bool)> {
    let mut exits = vec![false; insns.len()];
    for f in functions {
        // Predecessors within the function; then everything that reaches an exit backwards.
        let mut preds: Vec<Vec<usize>> = vec![vec![]; f.end - f.start];
        let mut work = vec![];
        for (pc, insn) in insns.iter().enumerate().take(f.end).skip(f.start) {
            let mut edge = |to: i64| {
                if to >= f.start as i64 && (to as usize) < f.end {
                    preds[to as usize - f.start].push(pc);
                }
            };
            let may_stop = match insn {
                Insn::Call(CallTarget::Helper(id)) => helpers.get(*id).is_none_or(|h| !h.effects.never_stops),
                Insn::CallReg(_) => true,
                _ => false,
            };
            if may_stop {
                work.push(pc);
            }
            match insn {
                Insn::Exit => work.push(pc),
                Insn::LddwHigh => {}
                Insn::Ja { .. } => edge(insn.jump_target(pc).expect("a jump")),
                Insn::Jump { .. } => {
                    edge(insn.jump_target(pc).expect("a jump"));
                    edge(pc as i64 + 1);
                }
                Insn::Lddw { .. } => edge(pc as i64 + 2),
                _ => edge(pc as i64 + 1),
            }
        }
        while let Some(pc) = work.pop() {
            if !std::mem::replace(&mut exits[pc], true) {
                work.extend(&preds[pc - f.start]);
            }
        }
    }
    // Only where reaching it is known (a function too costly to analyse might hold dead code).
    let trapped = |pc: usize| reachable[pc] && reach_known[pc] && !exits[pc] && !matches!(insns[pc], Insn::LddwHigh);
    // Named by the head of its loop (a backward jump's target), where the kernel finds it too.
    let head = (0..insns.len())
        .filter(|&pc| trapped(pc))
        .filter_map(|pc| insns[pc].jump_target(pc).filter(|&t| t >= 0 && (t as usize) <= pc).map(|t| t as usize))
        .filter(|&t| trapped(t))
        .min();
    let first = head.or_else(|| (0..insns.len()).find(|&pc| trapped(pc)))?;
    let changes_state = (0..insns.len()).any(|pc| trapped(pc) && !matches!(insns[pc], Insn::Ja { .. } | Insn::Jump { .. }));
    Some((first, changes_state))
}

/// Replaces the map-naming `lddw` at `pc` by the constant `resolver` gives, and returns what
/// the resolver says it points to.
pub(crate) fn resolve_lddw(insns: &mut [Insn], pc: usize, resolver: &dyn LddwResolver) -> Result<Option<Pointee>, VerifyError> {
    let Insn::Lddw { dst, kind, lo, hi } = insns[pc] else { return Ok(None) };
    let v = resolver.resolve(kind, lo, hi).map_err(|msg| err(pc, VerifyErrorKind::Unresolved { kind, msg }))?;
    insns[pc] = Insn::Lddw { dst, kind: LddwKind::Imm64, lo: v as u32 as i32, hi: (v >> 32) as u32 as i32 };
    Ok(resolver.pointee(kind, lo, hi))
}

/// Checks one instruction of function `f`; calls to helpers `helpers` lacks go to
/// `unknown_calls` (slot, helper id) for the caller to refuse where they are reachable.
fn check_insn(insns: &[Insn], pc: usize, f: &Function, helpers: &HelperTable, unknown_calls: &mut Vec<(usize, u32)>) -> Result<(), VerifyError> {
    let insn = insns[pc];
    if insn.written_reg() == Some(Reg::FP) {
        return Err(err(pc, VerifyErrorKind::WriteToFramePointer));
    }
    if let Some(target) = insn.jump_target(pc) {
        if target < 0 || target as usize >= insns.len() {
            return Err(err(pc, VerifyErrorKind::JumpOutOfRange { target }));
        }
        if matches!(insns[target as usize], Insn::LddwHigh) {
            return Err(err(pc, VerifyErrorKind::JumpIntoLddw { target }));
        }
        if (target as usize) < f.start || target as usize >= f.end {
            return Err(err(pc, VerifyErrorKind::JumpOutOfFunction { target, start: f.start, end: f.end }));
        }
    }
    let stack_access = match insn {
        Insn::Load { size, base, off, .. } | Insn::Store { size, base, off, .. } | Insn::Atomic { size, base, off, .. } if base == Reg::FP => {
            Some((off, size.bytes()))
        }
        _ => None,
    };
    if let Some((off, size)) = stack_access {
        if (off as i64) < -(FRAME_SIZE as i64) || off as i64 + size as i64 > 0 {
            return Err(err(pc, VerifyErrorKind::StackOutOfBounds { off, size }));
        }
    }
    match insn {
        Insn::Call(CallTarget::Helper(id)) if helpers.get(id).is_none() => {
            unknown_calls.push((pc, id));
            Ok(())
        }
        Insn::Call(CallTarget::Kfunc(id)) => Err(err(pc, VerifyErrorKind::Kfunc(id))),
        _ => Ok(()),
    }
}

/// The first instruction no path of the program's control-flow graph reaches (both ways of
/// every conditional jump taken, local calls and callbacks entered), as the kernel's
/// `check_cfg` finds it ("unreachable insn"). Programs as libbpf links them (with only the
/// subprograms they call) have none; an object's `.text` appended whole may.
pub fn first_unreachable(raw: &[RawInsn]) -> Option<usize> {
    reached_slots(raw)?.iter().position(|s| !s)
}

/// Per slot, whether an edge of the program's control-flow graph reaches it from its entry
/// (see [`first_unreachable`]); None if the program does not decode.
pub fn reached_slots(raw: &[RawInsn]) -> Option<Vec<bool>> {
    let insns = decode(raw).ok()?;
    let n = insns.len();
    let mut seen = vec![false; n];
    let mut todo = vec![0usize];
    while let Some(pc) = todo.pop() {
        if pc >= n || seen[pc] {
            continue;
        }
        seen[pc] = true;
        let target = |off: i64| (pc as i64 + 1 + off) as usize;
        match insns[pc] {
            Insn::Exit => {}
            Insn::Ja { .. } => todo.extend(insns[pc].jump_target(pc).map(|t| t as usize)),
            Insn::Jump { .. } => {
                todo.extend(insns[pc].jump_target(pc).map(|t| t as usize));
                todo.push(pc + 1);
            }
            Insn::Lddw { kind, lo, .. } => {
                if kind == LddwKind::Func {
                    todo.push(target(lo as i64));
                }
                if pc + 1 < n {
                    seen[pc + 1] = true;
                }
                todo.push(pc + 2);
            }
            Insn::Call(CallTarget::Local(off)) => {
                todo.push(target(off as i64));
                todo.push(pc + 1);
            }
            _ => todo.push(pc + 1),
        }
    }
    Some(seen)
}

/// Rejects recursion and call chains deeper than [`MAX_CALL_DEPTH`] frames, counting a
/// callback's chain (a function whose address is taken with `lddw`) on top of the deepest
/// chain of the program. Returns each function's depth.
fn check_call_graph(insns: &[Insn], functions: &[Function]) -> Result<Vec<usize>, VerifyError> {
    let index_of = |pc: usize| functions.binary_search_by(|f| f.start.cmp(&pc)).expect("call targets start functions");
    // callees[f] = (call site, callee)
    let callees: Vec<Vec<(usize, usize)>> = functions
        .iter()
        .map(|f| {
            (f.start..f.end)
                .filter_map(|pc| match insns[pc] {
                    Insn::Call(CallTarget::Local(off)) => Some((pc, index_of((pc as i64 + 1 + off as i64) as usize))),
                    _ => None,
                })
                .collect()
        })
        .collect();
    // depth[f]: frames needed by f and everything it calls (memoised DFS).
    const UNSEEN: usize = 0;
    const ACTIVE: usize = usize::MAX;
    let mut depth = vec![UNSEEN; functions.len()];
    fn visit(f: usize, callees: &[Vec<(usize, usize)>], depth: &mut [usize], site: usize) -> Result<usize, VerifyError> {
        match depth[f] {
            ACTIVE => return Err(err(site, VerifyErrorKind::Recursion)),
            UNSEEN => {}
            d => return Ok(d),
        }
        depth[f] = ACTIVE;
        let mut d = 1;
        for &(pc, g) in &callees[f] {
            d = d.max(1 + visit(g, callees, depth, pc)?);
        }
        depth[f] = d;
        Ok(d)
    }
    // Every function, not only those reachable from the entry, must be well-formed: a
    // callback (lddw func) may be called by a helper.
    for (f, func) in functions.iter().enumerate() {
        let d = visit(f, &callees, &mut depth, func.start)?;
        if d > MAX_CALL_DEPTH {
            // Report the call that opens frame MAX_CALL_DEPTH + 1 on the deepest chain.
            let (mut g, mut level) = (f, 1);
            loop {
                let &(site, callee) = callees[g].iter().max_by_key(|(_, c)| depth[*c]).expect("deep chain has calls");
                level += 1;
                if level > MAX_CALL_DEPTH {
                    return Err(err(site, VerifyErrorKind::CallChainTooDeep { depth: d }));
                }
                g = callee;
            }
        }
    }
    // Callbacks run on the frames below the deepest chain of the entry function.
    for (pc, insn) in insns.iter().enumerate() {
        if let Insn::Lddw { kind: LddwKind::Func, lo, .. } = *insn {
            let f = index_of((pc as i64 + 1 + lo as i64) as usize);
            if depth[0] + depth[f] > MAX_CALL_DEPTH {
                return Err(err(pc, VerifyErrorKind::CallChainTooDeep { depth: depth[0] + depth[f] }));
            }
        }
    }
    Ok(depth)
}
