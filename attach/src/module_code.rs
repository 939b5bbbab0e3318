//! What a module's code tells the probes placed in it, learnt by decoding all of it once per
//! file: which vector registers it names, and which of its instructions are reached by jumps
//! from outside their function.
//!
//! **Vector registers.** At a probe point in a function, a value another frame still needs in
//! a vector register was put there by, and will be read by, code of the function's own module,
//! with exceptions. Code in other modules reaches the function through calls that follow the
//! System V ABI, which preserves no vector register across a call, so those callers keep
//! nothing there. Within the module a caller may keep values in any register its callee does
//! not touch (GCC's `-fipa-ra`), but only in registers its own instructions name, and only
//! across a direct call (a call through a pointer or the PLT follows the convention): what
//! matters is the code of the probed function and of the functions reaching it by direct
//! calls, jumps or falling through, transitively ([`CodeGraph::reaching`]). The
//! exceptions: the ABI's argument and result registers (xmm0-7, xmm0-1) carry values between
//! modules through code that need not name them (`__m256 f(__m256 x) { return x; }` is a bare
//! `ret`), and other conventions keep the low halves of more (Win64's `ms_abi` callees keep
//! xmm6-15, Go's internal ABI passes values in xmm0-14 and keeps xmm15 zero). So stubs keep
//! the argument and result registers at the full width the CPU has; the low 128 bits of every
//! register of xmm0-15 the module names anywhere (where an `ms_abi` caller of its own would
//! keep values), of all sixteen in Go code (its toolchain's sections tell it); and on top the
//! registers those functions' instructions name, at the widest width they use (with the
//! AVX-512 masks if any instruction names one). A C library that names no vector register
//! gets its results kept, and nothing else (an entry and a return probe cost 4.5 ns less a
//! call than with the sixteen low halves). Any doubt (the file on disk is not the one mapped,
//! it does not parse, the module saves or restores the whole state itself) means every
//! register. What this still assumes: no caller in another module relies on a vector
//! register across a call by a convention that keeps it (a Win64 `ms_abi` caller, clang's
//! `preserve_all`, TLS descriptor resolvers as the function probed): `BPFTIME_VECTORS=all`
//! makes every stub keep everything.
//!
//! **Jumps from outside.** A patch overwrites instructions; a jump landing in its middle would
//! run half of our jump. Jumps inside a function are checked against its own body, but GCC's
//! hot/cold splitting (`f.cold`) and hand-written code jump into other functions too: the scan
//! records every direct jump or call that lands inside a function (a symbol with a size) from
//! outside it.

use crate::procmaps::{mapping_of, open_mapped_file};
use iced_x86::{Decoder, DecoderOptions, EncodingKind, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpKind};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind, SymbolKind};
use std::sync::{Arc, Mutex};

/// The vector registers some code names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VectorUse {
    /// Bit i: vector register i (xmm, ymm or zmm i).
    pub(crate) regs: u32,
    /// The widest access, in bytes: 16 (xmm), 32 (ymm) or 64 (zmm); 0 when none.
    pub(crate) width: i32,
    /// Whether an AVX-512 mask register is named.
    pub(crate) masks: bool,
}

impl VectorUse {
    /// Code that names no vector register.
    pub(crate) const NONE: VectorUse = VectorUse { regs: 0, width: 0, masks: false };
    /// Every register, at full width: what is kept when in doubt.
    pub(crate) const ALL: VectorUse = VectorUse { regs: u32::MAX, width: 64, masks: true };

    /// Adds register `r`, named at `width` bytes.
    fn add_register(&mut self, r: iced_x86::Register, width: i32) {
        if r.is_xmm() || r.is_ymm() || r.is_zmm() {
            self.regs |= 1 << r.number();
            self.width = self.width.max(width);
        } else if r.is_k() {
            self.masks = true;
        }
    }

    /// Adds what `i` names, explicitly or implicitly.
    pub(crate) fn add_instruction(&mut self, i: &Instruction, info: &mut InstructionInfoFactory) {
        if i.encoding() == EncodingKind::Legacy {
            // Legacy (SSE) encodings name xmm registers as operands, except for these, which
            // save, restore or use registers without naming them.
            if matches!(
                i.mnemonic(),
                Mnemonic::Fxrstor
                    | Mnemonic::Fxrstor64
                    | Mnemonic::Fxsave
                    | Mnemonic::Fxsave64
                    | Mnemonic::Xrstor
                    | Mnemonic::Xrstor64
                    | Mnemonic::Xrstors
                    | Mnemonic::Xrstors64
                    | Mnemonic::Xsave
                    | Mnemonic::Xsave64
                    | Mnemonic::Xsavec
                    | Mnemonic::Xsavec64
                    | Mnemonic::Xsaveopt
                    | Mnemonic::Xsaveopt64
                    | Mnemonic::Xsaves
                    | Mnemonic::Xsaves64
                    | Mnemonic::Encodekey128
                    | Mnemonic::Encodekey256
                    | Mnemonic::Loadiwkey
                    | Mnemonic::Aesencwide128kl
                    | Mnemonic::Aesdecwide128kl
                    | Mnemonic::Aesencwide256kl
                    | Mnemonic::Aesdecwide256kl
            ) {
                *self = VectorUse::ALL;
                return;
            }
            if !(0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Register && i.op_register(k).is_xmm()) {
                return;
            }
        }
        // VEX, EVEX and the rest, and SSE instructions: every register they use, implicit
        // ones (blendvps's xmm0) included, at the widest width an operand names (the info
        // reports a VEX write as one to the whole zmm register, which it clears above).
        let width = (0..i.op_count())
            .filter_map(|k| match i.op_kind(k) {
                OpKind::Register => Some(i.op_register(k)),
                OpKind::Memory => Some(i.memory_index()),
                _ => None,
            })
            .map(|r| {
                if r.is_zmm() {
                    64
                } else if r.is_ymm() {
                    32
                } else {
                    16
                }
            })
            .max()
            .unwrap_or(16);
        for u in info.info(i).used_registers() {
            self.add_register(u.register(), width);
        }
    }

    fn is_all(&self) -> bool {
        *self == VectorUse::ALL
    }

    fn union(self, other: VectorUse) -> VectorUse {
        VectorUse { regs: self.regs | other.regs, width: self.width.max(other.width), masks: self.masks || other.masks }
    }
}

/// Functions of a module: `(start, end)` of each symbol with a size, sorted by start.
type Functions = [(u64, u64)];

/// The index in `functions` of the function holding `at`, if any (of the last few starting
/// before it, for symbols that overlap).
fn function_index(functions: &Functions, at: u64) -> Option<usize> {
    let k = functions.partition_point(|f| f.0 <= at);
    (k.saturating_sub(4)..k).rev().find(|&i| at < functions[i].1)
}

/// `functions` with overlapping ones merged (aliases, symbols nested in others): the nodes of
/// a [`CodeGraph`], each instruction in at most one.
fn disjoint(functions: &Functions) -> Vec<(u64, u64)> {
    let mut nodes: Vec<(u64, u64)> = vec![];
    for &(start, end) in functions {
        match nodes.last_mut() {
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => nodes.push((start, end)),
        }
    }
    nodes
}

/// What a module's code tells, per function: node `i` is function `i` of the module's
/// functions, node `n` (their count) all code outside them.
#[derive(Debug)]
struct CodeGraph {
    /// The vector registers each node's code names.
    vectors: Vec<VectorUse>,
    /// Each node's callers: the nodes that call it, jump to it or fall through into it (made
    /// from `edges` by [`CodeGraph::finish`]).
    callers: Vec<Vec<u32>>,
    /// (to, from) of every direct call, jump or fall-through between nodes.
    edges: Vec<(u32, u32)>,
    /// Nodes entered from another by a jump or by falling through, not only by calls: their
    /// code may continue another function's (a `.cold` part, a second entry point).
    jumped_into: Vec<bool>,
    /// Addresses inside a function that a direct jump or call from outside it reaches (calls
    /// to its start excepted).
    foreign: Vec<u64>,
}

impl CodeGraph {
    fn new(functions: usize) -> CodeGraph {
        let n = functions + 1;
        CodeGraph { vectors: vec![VectorUse::NONE; n], callers: vec![vec![]; n], edges: vec![], jumped_into: vec![false; n], foreign: vec![] }
    }

    fn edge(&mut self, from: usize, to: usize) {
        if from != to {
            self.edges.push((to as u32, from as u32));
        }
    }

    /// An edge that is not a call.
    fn jump(&mut self, from: usize, to: usize) {
        self.edge(from, to);
        self.jumped_into[to] |= from != to;
    }

    /// Turns the edges into caller lists, and sorts the foreign addresses.
    fn finish(&mut self) {
        self.edges.sort_unstable();
        self.edges.dedup();
        for (to, from) in self.edges.drain(..) {
            self.callers[to as usize].push(from);
        }
        self.foreign.sort_unstable();
        self.foreign.dedup();
    }

    /// What a probe in node `node` must keep for the module's code: what the node and every
    /// node that reaches it through direct calls and jumps name (a caller built with GCC's
    /// `-fipa-ra` relies on registers its known callee does not touch, and its own callers on
    /// those it does not, and so on up; calls through pointers or from other modules follow
    /// a calling convention instead).
    fn reaching(&self, node: usize) -> VectorUse {
        let mut seen = vec![false; self.vectors.len()];
        let mut todo = vec![node];
        seen[node] = true;
        let mut used = VectorUse::NONE;
        while let Some(n) = todo.pop() {
            used = used.union(self.vectors[n]);
            for &c in &self.callers[n] {
                if !std::mem::replace(&mut seen[c as usize], true) {
                    todo.push(c as usize);
                }
            }
        }
        used
    }
}

/// Scans the code `text`, loaded at `ip`, into `graph`, whose nodes are `nodes` (disjoint;
/// `symbols` are the sized function symbols they were made of): one sweep from its start, and
/// again from each of `starts` (function entries) that the sweep did not reach as an
/// instruction boundary, so that data or padding between functions cannot hide an instruction.
fn scan(text: &[u8], ip: u64, starts: &[u64], symbols: &Functions, nodes: &Functions, graph: &mut CodeGraph) {
    let outside = nodes.len();
    let node_of = |at: u64| function_index(nodes, at).unwrap_or(outside);
    let mut info = InstructionInfoFactory::new();
    let mut boundary = vec![0u64; text.len() / 64 + 1];
    let mut instr = Instruction::default();
    let mut sweep = |from: usize, graph: &mut CodeGraph, stop_at_known: bool| {
        let mut dec = Decoder::with_ip(64, &text[from..], ip + from as u64, DecoderOptions::NONE);
        // The node of the previous instruction, if control may fall through from it.
        let mut falls_from: Option<usize> = None;
        // The function the sweep is in (most instructions are in the previous one's).
        let mut current = (0u64, 0u64, outside);
        let mut node_here = |at: u64| {
            if at < current.0 || at >= current.1 {
                let n = node_of(at);
                current = nodes.get(n).map_or((0, 0, n), |f| (f.0, f.1, n));
            }
            current.2
        };
        while dec.can_decode() {
            let at = from + dec.position();
            if stop_at_known && boundary[at / 64] & (1 << (at % 64)) != 0 {
                if let Some(prev) = falls_from {
                    graph.jump(prev, node_of(ip + at as u64));
                }
                return;
            }
            boundary[at / 64] |= 1 << (at % 64);
            dec.decode_out(&mut instr);
            let node = node_here(instr.ip());
            // Nops between functions (alignment padding) pass on whatever falls into them.
            if node == outside && instr.mnemonic() == Mnemonic::Nop {
                continue;
            }
            if let Some(prev) = falls_from {
                graph.jump(prev, node);
            }
            if instr.is_invalid() {
                falls_from = Some(node);
                continue;
            }
            if !graph.vectors[node].is_all() {
                graph.vectors[node].add_instruction(&instr, &mut info);
            }
            let flow = instr.flow_control();
            if matches!(flow, FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call) {
                let t = instr.near_branch_target();
                if flow == FlowControl::Call {
                    graph.edge(node, node_of(t));
                } else {
                    graph.jump(node, node_of(t));
                }
                if let Some(&(start, end)) = function_index(symbols, t).map(|i| &symbols[i]) {
                    let from_outside = instr.ip() < start || instr.ip() >= end;
                    if from_outside && !(t == start && flow == FlowControl::Call) {
                        graph.foreign.push(t);
                    }
                }
            }
            // A jump through a table may land in code without a sized symbol (a stripped
            // `.cold` part).
            if flow == FlowControl::IndirectBranch {
                graph.jump(node, outside);
            }
            let ends = matches!(flow, FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch)
                || matches!(instr.mnemonic(), Mnemonic::Int3 | Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 | Mnemonic::Hlt);
            falls_from = (!ends).then_some(node);
        }
    };
    sweep(0, graph, false);
    for &s in starts {
        if s >= ip && s < ip + text.len() as u64 {
            sweep((s - ip) as usize, graph, true);
        }
    }
}

/// Where what was learnt of a file is kept between processes (the agent gives its code
/// cache, which holds only what this user or root wrote): scanning libc takes tens of
/// milliseconds, which every traced process with a probe in it would pay.
pub trait FactsStore: Send + Sync {
    /// The bytes stored under `key`, if any.
    fn load(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `data` under `key` (best effort).
    fn store(&self, key: &[u8], data: &[u8]);
}

static STORE: std::sync::OnceLock<Arc<dyn FactsStore>> = std::sync::OnceLock::new();

/// Keeps the facts learnt of files in `store` from now on, and looks there first (once per
/// process; later calls are ignored).
pub fn set_facts_store(store: Arc<dyn FactsStore>) {
    let _ = STORE.set(store);
}

/// Little-endian writer and reader of [`FileFacts`] (`encode`, `decode`): counts, then items.
struct Bytes(Vec<u8>);

impl Bytes {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn vectors(&mut self, v: VectorUse) {
        self.u64(v.regs as u64 | (v.width as u64) << 32 | (v.masks as u64) << 40);
    }
    fn pairs(&mut self, v: &[(u64, u64)]) {
        self.u64(v.len() as u64);
        for &(a, b) in v {
            self.u64(a);
            self.u64(b);
        }
    }
}

struct Read<'a>(&'a [u8]);

impl Read<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }
    /// A count of items of at least `item` bytes each that the rest can hold.
    fn count(&mut self, item: usize) -> Option<usize> {
        usize::try_from(self.u64()?).ok().filter(|&n| n.checked_mul(item).is_some_and(|b| b <= self.0.len()))
    }
    fn vectors(&mut self) -> Option<VectorUse> {
        let v = self.u64()?;
        let width = (v >> 32) as u8 as i32;
        matches!(width, 0 | 16 | 32 | 64).then_some(VectorUse { regs: v as u32, width, masks: v >> 40 & 1 != 0 })
    }
    fn pairs(&mut self) -> Option<Vec<(u64, u64)>> {
        (0..self.count(16)?).map(|_| Some((self.u64()?, self.u64()?))).collect()
    }
}

impl FileFacts {
    fn encode(&self) -> Vec<u8> {
        let mut b = Bytes(Vec::new());
        b.vectors(self.vectors);
        b.u64(self.go as u64);
        b.pairs(&self.functions);
        let g = &self.graph;
        b.u64(g.vectors.len() as u64);
        for (i, v) in g.vectors.iter().enumerate() {
            b.vectors(*v);
            b.u64(g.jumped_into[i] as u64);
            b.u64(g.callers[i].len() as u64);
            for &c in &g.callers[i] {
                b.u64(c as u64);
            }
        }
        b.u64(self.foreign.len() as u64);
        for &f in &self.foreign {
            b.u64(f);
        }
        b.u64(self.segments.len() as u64);
        for &(a, o, n) in &self.segments {
            b.u64(a);
            b.u64(o);
            b.u64(n);
        }
        b.0
    }

    /// What [`FileFacts::encode`] wrote, checked to be consistent (node indices in range, one
    /// node per function and one for code outside them), or None.
    fn decode(bytes: &[u8]) -> Option<FileFacts> {
        let mut r = Read(bytes);
        let vectors = r.vectors()?;
        let go = r.u64()? != 0;
        let functions = r.pairs()?;
        let n = r.count(24)?;
        if n != functions.len() + 1 {
            return None;
        }
        let mut graph = CodeGraph::new(functions.len());
        for i in 0..n {
            graph.vectors[i] = r.vectors()?;
            graph.jumped_into[i] = r.u64()? != 0;
            graph.callers[i] = (0..r.count(8)?).map(|_| r.u64().and_then(|c| u32::try_from(c).ok()).filter(|&c| (c as usize) < n)).collect::<Option<_>>()?;
        }
        let foreign = (0..r.count(8)?).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
        let segments = (0..r.count(24)?).map(|_| Some((r.u64()?, r.u64()?, r.u64()?))).collect::<Option<Vec<_>>>()?;
        r.0.is_empty().then_some(FileFacts { vectors, go, functions, graph, foreign, segments })
    }
}

/// The facts of the file with identity `key` (device, inode, size, times): from the store when
/// it has them, else scanned (and stored).
fn facts_of(file: std::fs::File, len: u64, key: &[i64; 7]) -> Option<FileFacts> {
    let store = STORE.get();
    let mut id = format!("module facts {}", env!("BPFTIME_MODULE_FACTS_ID")).into_bytes();
    for k in key {
        id.extend_from_slice(&k.to_le_bytes());
    }
    if let Some(f) = store.and_then(|s| s.load(&id)).and_then(|b| FileFacts::decode(&b)) {
        return Some(f);
    }
    let facts = scan_file(file, len)?;
    if let Some(s) = store {
        s.store(&id, &facts.encode());
    }
    Some(facts)
}

/// Files larger than this are not read: every register is kept for them.
const MAX_FILE: u64 = 1 << 30;

/// What was learnt of one file.
#[derive(Debug)]
struct FileFacts {
    /// What all its code names.
    vectors: VectorUse,
    /// Whether it holds Go code (a Go program or library: its internal ABI passes values in
    /// xmm0-14 and keeps xmm15 zero).
    go: bool,
    /// Its functions (link-time addresses, overlapping ones merged) and what each needs kept
    /// (see [`CodeGraph`]).
    functions: Vec<(u64, u64)>,
    graph: CodeGraph,
    /// Link-time addresses jumped to from outside their function (sorted).
    foreign: Vec<u64>,
    /// Loadable segments: (link-time address, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
}

/// A module's code as mapped in this process.
#[derive(Clone, Debug)]
pub(crate) struct ModuleCode {
    facts: Arc<FileFacts>,
    /// Run-time address minus link-time address.
    bias: u64,
}

impl ModuleCode {
    /// The vector registers a probe at `addr` (run-time) must keep for the module's code: what
    /// its function and every function reaching it through direct calls or jumps name; what
    /// the whole module names outside functions.
    pub(crate) fn vectors_at(&self, addr: u64) -> VectorUse {
        match function_index(&self.facts.functions, addr.wrapping_sub(self.bias)) {
            Some(f) => self.facts.graph.reaching(f),
            None => self.facts.vectors,
        }
    }

    /// The vector registers 0-15 (bit i: xmm i) whose low 128 bits callers may keep values in
    /// across a call by a convention other than System V's, which keeps none: every one the
    /// module names (a Win64 `ms_abi` caller keeps values in xmm6-15), all sixteen in Go code.
    pub(crate) fn kept_by_other_conventions(&self) -> u16 {
        if self.facts.go {
            0xffff
        } else {
            self.facts.vectors.regs as u16
        }
    }

    /// Whether the function at `addr` (run-time) may be entered by a jump or by falling through
    /// from another, not only by calls (it may continue another function's code). Unknown code
    /// may.
    pub(crate) fn entered_by_jump(&self, addr: u64) -> bool {
        function_index(&self.facts.functions, addr.wrapping_sub(self.bias)).is_none_or(|f| self.facts.graph.jumped_into[f])
    }

    /// Whether a jump or call from outside its function lands in `start..end` (run-time
    /// addresses).
    pub(crate) fn jumped_into_from_outside(&self, start: u64, end: u64) -> bool {
        let (s, e) = (start.wrapping_sub(self.bias), end.wrapping_sub(self.bias));
        let k = self.facts.foreign.partition_point(|&t| t < s);
        self.facts.foreign.get(k).is_some_and(|&t| t < e)
    }
}

/// The code of the module mapped at `addr`, or None when it cannot be told (anonymous memory,
/// a file that is not the one mapped or does not parse). Cached per file.
pub(crate) fn module_at(addr: u64) -> Option<ModuleCode> {
    type Key = [i64; 7];
    static CACHE: Mutex<Vec<(Key, Arc<FileFacts>)>> = Mutex::new(Vec::new());
    let m = mapping_of(addr)?;
    let file = open_mapped_file(&m)?;
    let meta = file.metadata().ok()?;
    use std::os::unix::fs::MetadataExt;
    if meta.len() > MAX_FILE {
        return None;
    }
    // A file rewritten in place keeps its inode: its size and times tell it apart.
    let key = [meta.dev() as i64, meta.ino() as i64, meta.len() as i64, meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()];
    let cached = CACHE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key).map(|(_, f)| f.clone());
    let facts = match cached {
        Some(f) => f,
        None => {
            let f = Arc::new(facts_of(file, meta.len(), &key)?);
            // Another thread may have scanned the same file meanwhile: one copy is kept.
            let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
            match cache.iter().find(|(k, _)| *k == key) {
                Some((_, first)) => first.clone(),
                None => {
                    cache.push((key, f.clone()));
                    f
                }
            }
        }
    };
    // The link-time address of `addr`, through the segment holding its file offset.
    let offset = addr - m.start + m.offset;
    let &(vaddr, seg_off, _) = facts.segments.iter().find(|(_, off, size)| offset >= *off && offset < off + size)?;
    let bias = addr.wrapping_sub(vaddr + (offset - seg_off));
    Some(ModuleCode { facts, bias })
}

/// Scans the executable code of the file open as `file` (`len` bytes): its executable
/// sections, and what else its executable segments hold.
fn scan_file(mut file: std::fs::File, len: u64) -> Option<FileFacts> {
    use std::io::Read;
    let mut data = Vec::with_capacity(len as usize);
    file.read_to_end(&mut data).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let text_symbols = || elf.symbols().chain(elf.dynamic_symbols()).filter(|s| s.kind() == SymbolKind::Text && s.address() != 0);
    let mut starts: Vec<u64> = text_symbols().map(|s| s.address()).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut functions: Vec<(u64, u64)> = text_symbols().filter(|s| s.size() > 0).map(|s| (s.address(), s.address() + s.size())).collect();
    functions.sort_unstable();
    functions.dedup();
    let nodes = disjoint(&functions);
    let mut graph = CodeGraph::new(nodes.len());
    let mut add = |text: &[u8], at: u64| scan(text, at, &starts, &functions, &nodes, &mut graph);
    for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        add(section.data().ok()?, section.address());
    }
    // Bytes of executable segments that no section accounts for (or all of them, without
    // section headers) are code too, unless they are padding.
    let sections: Vec<(u64, u64)> = elf.sections().filter(|s| s.address() != 0).map(|s| (s.address(), s.address() + s.size())).collect();
    let mut any = !sections.is_empty();
    for segment in elf.segments() {
        let object::SegmentFlags::Elf { p_flags, .. } = segment.flags() else { continue };
        if p_flags.0 & 1 == 0 {
            // Not executable (PF_X).
            continue;
        }
        any = true;
        let (start, data) = (segment.address(), segment.data().ok()?);
        let mut at = start;
        while at < start + data.len() as u64 {
            if let Some(&(_, end)) = sections.iter().find(|(s, e)| *s <= at && at < *e) {
                at = end;
                continue;
            }
            let next = sections.iter().map(|(s, _)| *s).filter(|&s| s > at).min().unwrap_or(u64::MAX).min(start + data.len() as u64);
            let gap = &data[(at - start) as usize..(next - start) as usize];
            if gap.iter().any(|b| !matches!(b, 0x00 | 0x90 | 0xcc)) {
                add(gap, at);
            }
            at = next;
        }
    }
    // A `.cold` part is its parent's code, which reaches it through jump tables too.
    let node_at = |addr: u64| function_index(&nodes, addr);
    let named: std::collections::HashMap<&str, u64> = text_symbols().filter_map(|s| Some((s.name().ok()?, s.address()))).collect();
    for sym in text_symbols() {
        let Ok(name) = sym.name() else { continue };
        let Some(k) = name.find(".cold") else { continue };
        if let (Some(parent), Some(cold)) = (named.get(&name[..k]).and_then(|&a| node_at(a)), node_at(sym.address())) {
            graph.jump(parent, cold);
            graph.jump(cold, parent);
        }
    }
    graph.finish();
    let foreign = std::mem::take(&mut graph.foreign);
    let vectors = graph.vectors.iter().fold(VectorUse::NONE, |u, v| u.union(*v));
    let segments = elf.segments().map(|s| (s.address(), s.file_range().0, s.file_range().1)).collect();
    // Go's toolchain marks what it builds (build id notes, its build info, its line tables,
    // named as its internal or an external linker leaves them; the runtime's text symbol).
    let go = elf
        .sections()
        .filter_map(|s| s.name().ok())
        .any(|n| n.starts_with(".note.go.") || matches!(n, ".go.buildinfo" | ".gopclntab" | ".data.rel.ro.gopclntab" | ".gosymtab"))
        || elf.symbols().chain(elf.dynamic_symbols()).any(|s| s.name() == Ok("runtime.text"));
    let facts = FileFacts { vectors, go, functions: nodes, graph, foreign, segments };
    any.then_some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn vectors(code: &[u8], starts: &[u64]) -> VectorUse {
        let mut graph = CodeGraph::new(0);
        scan(code, 0x1000, starts, &[], &[], &mut graph);
        graph.vectors[0]
    }

    fn code(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.assemble(0x1000).unwrap()
    }

    #[test]
    fn integer_code_names_nothing() {
        let c = code(|a| {
            a.lea(rax, ptr(rdi + rsi))?;
            a.imul_3(rax, rax, 3)?;
            a.push(rbx)?;
            a.pop(rbx)?;
            a.ret()
        });
        assert_eq!(vectors(&c, &[]), VectorUse::NONE);
    }

    #[test]
    fn registers_and_widths_as_named() {
        let sse = code(|a| {
            a.movaps(xmm3, xmm9)?;
            a.ret()
        });
        assert_eq!(vectors(&sse, &[]), VectorUse { regs: 1 << 3 | 1 << 9, width: 16, masks: false });
        // blendvps names xmm0 implicitly.
        let blend = code(|a| a.blendvps(xmm1, xmm2));
        assert_eq!(vectors(&blend, &[]).regs, 0b111);
        let avx = code(|a| a.vaddps(ymm5, ymm5, ymm6));
        assert_eq!(vectors(&avx, &[]), VectorUse { regs: 1 << 5 | 1 << 6, width: 32, masks: false });
        let evex = code(|a| {
            a.vpaddd(zmm20, zmm20, zmm1)?;
            a.kmovw(k1, eax)
        });
        assert_eq!(vectors(&evex, &[]), VectorUse { regs: 1 << 20 | 1 << 1, width: 64, masks: true });
        // vzeroupper clears upper halves: it reads none.
        assert_eq!(vectors(&code(|a| a.vzeroupper()), &[]), VectorUse { regs: 0xffff, width: 16, masks: false });
        // A gather's vector index.
        let gather = code(|a| a.vpgatherdd(ymm1.k1(), dword_ptr(rax + ymm7)));
        assert_eq!(vectors(&gather, &[]), VectorUse { regs: 1 << 1 | 1 << 7, width: 32, masks: true });
    }

    #[test]
    fn whole_state_saves_mean_everything() {
        let c = code(|a| a.fxrstor64(ptr(rdi)));
        assert_eq!(vectors(&c, &[]), VectorUse::ALL);
        let c = code(|a| a.xsave64(ptr(rdi)));
        assert_eq!(vectors(&c, &[]), VectorUse::ALL);
    }

    #[test]
    fn function_starts_resync_the_sweep() {
        // A byte of data before a function makes the sweep decode `movaps xmm7, xmm1` as part
        // of another instruction (0xb8 = mov eax, imm32 swallows four bytes); the symbol start
        // decodes it where it is.
        let f = code(|a| a.movaps(xmm7, xmm1));
        let mut text = vec![0xb8];
        text.extend_from_slice(&f);
        text.extend_from_slice(&[0xc3; 4]);
        assert_eq!(vectors(&text, &[]).regs, 0, "the sweep alone misses it");
        assert_eq!(vectors(&text, &[0x1001]).regs, 1 << 7 | 1 << 1);
    }

    #[test]
    fn jumps_into_a_function_from_outside_are_recorded() {
        // f: 0x1000..0x1010: nop; jmp short +0 (to its ret); ret; int3 padding.
        let mut code = vec![0x90, 0xeb, 0x00, 0xc3];
        code.resize(16, 0xcc);
        // g: 0x1010: call f; jne 0x1003 (f's ret); ret.
        code.extend_from_slice(&[0xe8]);
        code.extend_from_slice(&(0x1000i32 - 0x1015).to_le_bytes());
        code.extend_from_slice(&[0x0f, 0x85]);
        code.extend_from_slice(&(0x1003i32 - 0x101b).to_le_bytes());
        code.push(0xc3);
        let mut graph = CodeGraph::new(2);
        let functions = [(0x1000, 0x1010), (0x1010, 0x1000 + code.len() as u64)];
        scan(&code, 0x1000, &[0x1000, 0x1010], &functions, &functions, &mut graph);
        graph.finish();
        assert_eq!(graph.foreign, vec![0x1003], "the call to f's start and f's own jump are not recorded");
        assert_eq!(graph.callers, vec![vec![1], vec![], vec![]], "g calls f");
    }

    #[test]
    fn a_probe_keeps_what_the_functions_reaching_it_name() {
        // a (0x1000): names xmm9, calls b. b (0x1010): names nothing, returns. c (0x1020):
        // names zmm20, jumps to d. d (0x1030): names xmm3, falls through into e. e (0x1040):
        // names nothing. Only code that reaches a function by direct calls, jumps or falling
        // through can rely on its registers.
        let function = |at: u64, body: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| {
            let mut a = CodeAssembler::new(64).unwrap();
            body(&mut a).unwrap();
            let mut bytes = a.assemble(at).unwrap();
            bytes.resize(16, 0xcc);
            bytes
        };
        let mut code = function(0x1000, &|a| {
            a.movaps(xmm9, xmm9)?;
            a.call(0x1010u64)?;
            a.ret()
        });
        code.extend(function(0x1010, &|a| a.ret()));
        code.extend(function(0x1020, &|a| {
            a.vpaddd(zmm20, zmm20, zmm20)?;
            a.jmp(0x1030u64)
        }));
        // d: movaps xmm3, xmm3, then nops into e.
        code.extend([0x0f, 0x28, 0xdb].into_iter().chain([0x90; 13]));
        code.extend(function(0x1040, &|a| a.ret()));
        let starts: Vec<u64> = (0..5).map(|i| 0x1000 + 16 * i).collect();
        let functions: Vec<(u64, u64)> = starts.iter().map(|&s| (s, s + 16)).collect();
        assert_eq!(code.len(), 16 * 5, "{code:02x?}");
        let mut graph = CodeGraph::new(5);
        scan(&code, 0x1000, &starts, &functions, &functions, &mut graph);
        graph.finish();
        assert_eq!(graph.reaching(1), VectorUse { regs: 1 << 9, width: 16, masks: false }, "b: a's xmm9");
        assert_eq!(graph.reaching(0).regs, 1 << 9);
        let e = graph.reaching(4);
        assert_eq!((e.regs, e.width), (1 << 3 | 1 << 20, 64), "e: d's xmm3 (falling through) and c's zmm20 (jumping to d)");
    }

    #[test]
    fn overlapping_symbols_make_one_node() {
        let symbols = [(0x1000, 0x1100), (0x1000, 0x1040), (0x1010, 0x1020), (0x1020, 0x1030), (0x1030, 0x1038), (0x1040, 0x1050), (0x1200, 0x1210)];
        let nodes = disjoint(&symbols);
        assert_eq!(nodes, vec![(0x1000, 0x1100), (0x1200, 0x1210)]);
        assert_eq!(function_index(&nodes, 0x10f0), Some(0), "past five nested symbols");
        assert_eq!(function_index(&nodes, 0x1150), None);
    }

    #[test]
    fn facts_survive_their_encoding_and_damage_is_refused() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let len = exe.metadata().unwrap().len();
        let facts = scan_file(exe, len).unwrap();
        let bytes = facts.encode();
        let back = FileFacts::decode(&bytes).expect("decodes");
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.functions, facts.functions);
        assert!(!facts.functions.is_empty() && !facts.foreign.is_empty());
        // Cut short, grown, or with a caller out of range: not facts.
        assert!(FileFacts::decode(&bytes[..bytes.len() - 8]).is_none());
        assert!(FileFacts::decode(&[&bytes[..], &[0; 8]].concat()).is_none());
        let one_node_called_by = |caller: u64| {
            let mut b = Bytes(Vec::new());
            b.vectors(VectorUse::NONE);
            b.u64(0);
            b.pairs(&[]);
            b.u64(1);
            b.vectors(VectorUse::NONE);
            b.u64(0);
            b.u64(1);
            b.u64(caller);
            b.u64(0);
            b.u64(0);
            b.0
        };
        assert!(FileFacts::decode(&one_node_called_by(0)).is_some(), "caller 0 of 1 node");
        assert!(FileFacts::decode(&one_node_called_by(7)).is_none(), "caller 7 of 1 node");
    }

    #[test]
    fn this_test_binary_is_scanned_and_cached() {
        let here = integer_code_names_nothing as *const () as u64;
        let t = std::time::Instant::now();
        let m = module_at(here).expect("this binary");
        eprintln!("this test binary names {:?} ({:?} to scan); this test's function and its callers {:?}", m.facts.vectors, t.elapsed(), m.vectors_at(here));
        // Rust's standard library moves memory through xmm registers.
        assert!(m.facts.vectors.regs != 0 && m.facts.vectors.width >= 16);
        assert!(Arc::ptr_eq(&module_at(here).unwrap().facts, &m.facts), "cached");
        assert!(module_at(0x10).is_none(), "nothing mapped there");
    }

    fn block(at: u64, len: usize, body: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        body(&mut a).unwrap();
        let mut bytes = a.assemble(at).unwrap();
        assert!(bytes.len() <= len);
        bytes.resize(len, 0xcc);
        bytes
    }

    /// A symbol nested in another (S inside F) is one node with it: a probe in S keeps what S
    /// names, and what S calls is reached by S's callers.
    #[test]
    fn a_nested_symbol_is_part_of_its_function() {
        // F 0x1000..0x1030: nops falling into S; S 0x1010..0x1020: names ymm12, calls H,
        // returns; F's tail 0x1020: ret. H 0x1030: ret. C 0x1040: names ymm13, calls S.
        let mut code = vec![0x90u8; 16];
        code.extend(block(0x1010, 16, &|a| {
            a.vmovdqu(ymm12, ymm12)?;
            a.call(0x1030u64)?;
            a.ret()
        }));
        code.extend(block(0x1020, 16, &|a| a.ret()));
        code.extend(block(0x1030, 16, &|a| a.ret()));
        code.extend(block(0x1040, 16, &|a| {
            a.vmovdqu(ymm13, ymm13)?;
            a.call(0x1010u64)?;
            a.ret()
        }));
        let symbols = [(0x1000, 0x1030), (0x1010, 0x1020), (0x1030, 0x1040), (0x1040, 0x1050)];
        let nodes = disjoint(&symbols);
        let mut graph = CodeGraph::new(nodes.len());
        scan(&code, 0x1000, &[0x1000, 0x1010, 0x1030, 0x1040], &symbols, &nodes, &mut graph);
        graph.finish();
        let s = function_index(&nodes, 0x1015).unwrap();
        assert!(graph.reaching(s).regs & 1 << 12 != 0, "S's own ymm12: {:?}", graph.reaching(s));
        let h = function_index(&nodes, 0x1030).unwrap();
        assert!(graph.reaching(h).regs & 1 << 13 != 0, "H reached by C through S: {:?}", graph.reaching(h));
    }

    /// Code outside any sized symbol that falls through into a function (an entry point
    /// without a size) links its callers to that function; nop padding between functions does
    /// not.
    #[test]
    fn code_without_a_size_falls_into_the_next_function() {
        // G 0x1000 (no size): leas falling into F. F 0x1010: calls H. H 0x1020: ret, then nop
        // padding. K 0x1030: names ymm14, calls G. L 0x1040: ret.
        let mut code = block(0x1000, 16, &|a| {
            for _ in 0..4 {
                a.lea(rdi, ptr(rdi + 1))?;
            }
            Ok(())
        });
        code.extend(block(0x1010, 16, &|a| {
            a.call(0x1020u64)?;
            a.ret()
        }));
        code.extend([0xc3].into_iter().chain([0x90; 15]));
        code.extend(block(0x1030, 16, &|a| {
            a.vmovdqu(ymm14, ymm14)?;
            a.call(0x1000u64)?;
            a.ret()
        }));
        code.extend(block(0x1040, 16, &|a| a.ret()));
        let functions = [(0x1010, 0x1020), (0x1020, 0x1021), (0x1030, 0x1040), (0x1040, 0x1041)];
        let mut graph = CodeGraph::new(4);
        scan(&code, 0x1000, &[0x1000, 0x1010, 0x1020, 0x1030, 0x1040], &functions, &functions, &mut graph);
        graph.finish();
        assert!(graph.reaching(1).regs & 1 << 14 != 0, "H reached by K through G and F: {:?}", graph.reaching(1));
        assert!(graph.jumped_into[0], "F is entered by falling through");
        assert_eq!(graph.reaching(3), VectorUse::NONE, "the padding after H falls into nothing");
    }
}
