//! eBPF to PTX: one small translation loop, one `.func` per eBPF function.
//!
//! Each eBPF function becomes `.func (.reg .b64 %ret) bpf_fN(.reg .b64 %st, .reg .b64 %fp,
//! .reg .b64 %a1 .. %a5)`: `%st` is the run's state block ([`crate::state`]) and `%fp` the frame
//! pointer (r10). eBPF registers are `.b64` PTX registers; the 512-byte frames live in one
//! 4 KiB per-thread stack in local memory, reached through generic addresses (aligned
//! `r10`-relative accesses the verifier proved in the frame through `.local` ones). The semantics
//! are the interpreter's: division by zero gives 0 (modulo keeps the dividend), shifts are
//! masked to the width, 32-bit results are zero-extended, a callee starts with r0 and r6-r9
//! zeroed, a backward jump costs the length of its loop from the budget.
//!
//! Every access the verifier did not prove safe is checked inline against the stack, the
//! context and the map arena (a proven context load only against the context's length); a bad
//! one records a fault in the state and every function returns at once, so a fault ends the
//! probe, never the kernel. Unaligned accesses are done byte by byte (the GPU traps on them);
//! atomics on the stack (local memory, where the GPU has no atomics) are plain
//! read-modify-writes, which is exact for one thread's own stack.

use crate::helpers::{GpuHelper, HelperSet};
use crate::state::{self, off};
use bpftime_vm::analysis::ArrayLayout;
use bpftime_vm::insn::{AluOp, AtomicOp, ByteOrder, CallTarget, Insn, JmpCond, LddwKind, MemSize, Operand, RawInsn, Reg, Width};
use bpftime_vm::Program;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

/// Where the translated code runs, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Compute capability, e.g. 75 for `sm_75`.
    pub sm: u32,
    /// Send 64-bit atomic adds whose old value is not used, into shared arrays, to per-SM
    /// shards summed into the arrays after the launch ([`crate::maps::ArenaLayout::fold_shards`]).
    /// A hot counter then costs about what an uninstrumented kernel does instead of serialising
    /// the GPU on one address (7x, cuda-facts.md), but within a launch a program that reads or
    /// overwrites the value it adds to does not see its adds: off unless asked for
    /// (`--shard-adds`; GPU probes, whose counters are written only, turn it on).
    pub shard_atomic_adds: bool,
}

impl Default for Target {
    fn default() -> Self {
        Target { sm: 75, shard_atomic_adds: false }
    }
}

impl Target {
    /// `sm_N` without sharding.
    pub fn sm(sm: u32) -> Target {
        Target { sm, shard_atomic_adds: false }
    }
}

impl Target {
    /// Parses `sm_75`, `sm_90`, `90`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let n = s.trim().trim_start_matches("sm_").trim_start_matches("compute_");
        match n.parse::<u32>() {
            Ok(sm) if (75..=120).contains(&sm) => Ok(Target::sm(sm)),
            _ => Err(format!("unknown GPU target `{s}` (expected sm_75 .. sm_120)")),
        }
    }

    /// The PTX ISA version written: the oldest that knows the target, so that the drivers of
    /// CUDA 12.x and 13.x both accept the module.
    pub fn ptx_version(&self) -> &'static str {
        match self.sm {
            0..=86 => "7.0",
            87..=89 => "7.8",
            90..=99 => "7.8",
            100..=119 => "8.6",
            _ => "8.7",
        }
    }
}

/// What an `lddw` referring to a map becomes: the map's slot in the arena, or the address of
/// a byte of its (single) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LddwMap {
    /// `BPF_PSEUDO_MAP_FD`: a reference to the map in `slot`.
    Map { slot: u32 },
    /// `BPF_PSEUDO_MAP_VALUE`: the address of byte `offset` of the value of the map in `slot`.
    Value { slot: u32, offset: u32 },
}

/// Tag of a map reference on the GPU: `MAP_TAG | slot` (helpers check it).
pub const MAP_TAG: u64 = 0xbf6d_0000_0000_0000;

/// The map references of a program, by instruction index.
#[derive(Clone, Debug, Default)]
pub struct LddwMaps(pub HashMap<usize, LddwMap>);

impl LddwMaps {
    /// Reads the map references of the raw instructions a program was verified from (maps by
    /// id in `lo`), giving each map id the slot `slot_of` says.
    pub fn from_raw(raw: &[RawInsn], mut slot_of: impl FnMut(u32) -> Option<u32>) -> Result<LddwMaps, TranslateError> {
        let mut out = HashMap::new();
        let mut pc = 0;
        while pc < raw.len() {
            let r = raw[pc];
            if r.opc == 0x18 {
                let hi = raw.get(pc + 1).map_or(0, |h| h.imm);
                let kind = match r.src {
                    1 => Some(LddwMap::Map { slot: 0 }),
                    2 => Some(LddwMap::Value { slot: 0, offset: hi as u32 }),
                    _ => None,
                };
                if let Some(kind) = kind {
                    let slot = slot_of(r.imm as u32).ok_or(TranslateError { insn: pc, reason: format!("map {} has no GPU slot", r.imm) })?;
                    let m = match kind {
                        LddwMap::Map { .. } => LddwMap::Map { slot },
                        LddwMap::Value { offset, .. } => LddwMap::Value { slot, offset },
                    };
                    out.insert(pc, m);
                }
                pc += 2;
            } else {
                pc += 1;
            }
        }
        Ok(LddwMaps(out))
    }
}

/// Why a program cannot run on the GPU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insn {insn}: {reason}")]
pub struct TranslateError {
    /// The instruction.
    pub insn: usize,
    /// Why, in words.
    pub reason: String,
}

/// The name of the `.func` of eBPF function `index`.
pub fn function_name(index: usize) -> String {
    format!("bpf_f{index}")
}

/// Name of the one-thread-per-run kernel [`translate`] adds (`vm run --engine gpu`).
pub const RUN_KERNEL: &str = "bpftime_run";

/// Translates `prog` (and the helpers it calls from `helpers`) into a PTX module with a
/// `.func` per eBPF function and the [`RUN_KERNEL`] entry.
pub fn translate(prog: &Program, helpers: &HelperSet, maps: &LddwMaps, target: Target) -> Result<String, TranslateError> {
    let mut used: BTreeSet<u32> = BTreeSet::new();
    // Trusted variants called (by function name): helpers whose pointer arguments are proven.
    let mut variants: std::collections::BTreeMap<String, &GpuHelper> = std::collections::BTreeMap::new();
    let mut dynamic = false;
    let arrays = array_slots(prog, maps);
    for (pc, insn) in prog.insns().iter().enumerate() {
        if prog.access(pc).probe {
            // The CPU engines read 0 where such a load finds nothing; the GPU's would fault.
            return Err(TranslateError { insn: pc, reason: "loads through a BTF-typed kernel pointer are not available on the GPU".into() });
        }
        match insn {
            // An array lookup computed in place (see `FunctionWriter::inline_array_lookup`).
            Insn::Call(CallTarget::Helper(id)) if inline_lookup(prog, &arrays, *id, pc).is_some() => {}
            // A helper the CPU side lacks too: the verifier proved no run calls it (a fault
            // if one ever did).
            Insn::Call(CallTarget::Helper(id)) if prog.helpers().get(*id).is_none() => {}
            Insn::Call(CallTarget::Helper(id)) => {
                if helpers.get(*id).is_none() {
                    let name = prog.helpers().get(*id).map_or("?", |h| h.name);
                    return Err(TranslateError { insn: pc, reason: format!("helper {id} ({name}) is not available on the GPU") });
                }
                used.insert(*id);
                let plain = helpers.get(*id).expect("checked above");
                let h = plain.for_args(prog.helper_args(pc));
                if !std::ptr::eq(h, plain) {
                    variants.insert(h.func_name(), h);
                }
            }
            Insn::CallReg(_) => dynamic = true,
            Insn::Lddw { kind: LddwKind::MapFd | LddwKind::MapValue | LddwKind::MapIdx | LddwKind::MapIdxValue, .. } if !maps.0.contains_key(&pc) => {
                return Err(TranslateError { insn: pc, reason: "map reference without a GPU slot".into() });
            }
            _ => {}
        }
    }
    if dynamic {
        used.extend(helpers.ids());
    }
    let mut out = String::new();
    let _ = writeln!(out, "// Generated by bpftime-gpu-ptx from a verified eBPF program.");
    let _ = writeln!(out, ".version {}", target.ptx_version());
    let _ = writeln!(out, ".target sm_{}", target.sm);
    let _ = writeln!(out, ".address_size 64");
    let _ = writeln!(out);
    // Declarations first: functions call each other in any order.
    for i in 0..prog.functions().len() {
        let _ = writeln!(
            out,
            ".func (.reg .b64 %ret) {}(.reg .b64 %st, .reg .b64 %fp, .reg .b64 %a1, .reg .b64 %a2, .reg .b64 %a3, .reg .b64 %a4, .reg .b64 %a5);",
            function_name(i)
        );
    }
    // Each helper called (plain or trusted): its name and definition, made once.
    let called: Vec<(String, String)> =
        used.iter().map(|id| helpers.get(*id).expect("checked above")).chain(variants.values().copied()).map(|h| (h.func_name(), h.definition(prog))).collect();
    for (name, _) in &called {
        let _ = writeln!(out, ".func (.reg .b64 %ret) {name}(.reg .b64 %st, .reg .b64 %a1, .reg .b64 %a2, .reg .b64 %a3, .reg .b64 %a4, .reg .b64 %a5);");
    }
    // Those that may stop or fault the run write its status.
    let stops: BTreeSet<String> = called.iter().filter(|(_, def)| def.contains(&format!("st.u32 [%st+{}]", off::STATUS))).map(|(n, _)| n.clone()).collect();
    let _ = writeln!(out, "{HOST_OK_PROTO};");
    let support = if used.is_empty() { &[][..] } else { helpers.support() };
    for (proto, _) in support {
        let _ = writeln!(out, "{proto}");
    }
    out.push('\n');
    let ctx = Ctx { prog, helpers, maps, arrays, used: &used, stops: &stops, shard: target.shard_atomic_adds };
    for i in 0..prog.functions().len() {
        FunctionWriter::new(&ctx, i).write(&mut out);
    }
    for (_, def) in &called {
        out.push_str(def);
        out.push('\n');
    }
    for (_, def) in support {
        out.push_str(def);
        out.push_str("\n\n");
    }
    out.push_str(&host_ok_definition());
    write_run_kernel(&mut out);
    Ok(out)
}

/// The function that says whether an access outside the stack, the context and the arena
/// lies in the storage of a map kept in host memory (see [`crate::maps::header::HOST_MAPS`]).
const HOST_OK_PROTO: &str = ".func (.reg .b64 %ok) bpf_host_ok(.reg .b64 %st, .reg .b64 %addr, .reg .b64 %len)";

/// `ok = whether [addr, addr+len) lies in the storage of one of the arena's host memory maps`:
/// each map whose bit is set in the header, its storage at the arena plus its descriptor's
/// data offset (wrapping), `data_len` bytes.
fn host_ok_definition() -> String {
    use crate::maps::{desc, descriptor_offset, header};
    format!(
        "{HOST_OK_PROTO}
{{
.reg .b64 %lo, %mask, %d, %x, %n, %e;
.reg .pred %p;
mov.b64 %ok, 0;
ld.u64 %lo, [%st+{arena_lo}];
setp.eq.u64 %p, %lo, 0;
@%p ret;
ld.u64 %mask, [%lo+{host_maps}];
add.u64 %d, %lo, {first};
$next:
setp.eq.u64 %p, %mask, 0;
@%p ret;
and.b64 %x, %mask, 1;
shr.u64 %mask, %mask, 1;
add.u64 %d, %d, {desc_size};
setp.eq.u64 %p, %x, 0;
@%p bra $next;
ld.u64 %x, [%d+{data_off}];
add.u64 %x, %x, %lo;
ld.u64 %n, [%d+{data_len}];
sub.u64 %x, %addr, %x;
setp.lt.u64 %p, %x, %n;
setp.le.and.u64 %p, %len, %n, %p;
add.u64 %e, %x, %len;
setp.le.and.u64 %p, %e, %n, %p;
@!%p bra $next;
mov.b64 %ok, 1;
ret;
}}

",
        arena_lo = off::ARENA_LO,
        host_maps = header::HOST_MAPS,
        // The descriptor before slot 0's: each turn of the loop steps to the next first.
        first = descriptor_offset(0) as i64 - crate::maps::DESC_SIZE as i64,
        desc_size = crate::maps::DESC_SIZE,
        data_off = desc::DATA_OFF,
        data_len = desc::DATA_LEN,
    )
}

/// The kernel that runs the program once per thread: `bpftime_run(ctx, ctx_len, arena,
/// arena_len, budget, pid_tgid, h0, h1, h2, h3, h4, out, threads)` (threads past `threads`
/// return at once; `h0..h4` are the [`state::HostWords`]). Thread
/// `i` (the global thread id, numbered as bpftime numbers them: x fastest across the grid, then
/// y, then z) gets its own copy of the context at
/// `ctx + i * ctx_len` and writes `r0` then its 128-byte state block at `out + i * 136`.
/// Its local memory is the state block, then the stack (the PTX interpreter relies on that
/// order to put the stack where a CPU run had it).
fn write_run_kernel(out: &mut String) {
    let s = format!(
        r#".visible .entry {RUN_KERNEL}(.param .u64 p_ctx, .param .u64 p_ctx_len, .param .u64 p_arena, .param .u64 p_arena_len, .param .u64 p_budget, .param .u64 p_pid_tgid, .param .u64 p_h0, .param .u64 p_h1, .param .u64 p_h2, .param .u64 p_h3, .param .u64 p_h4, .param .u64 p_out, .param .u64 p_threads)
{{
.reg .pred %p_k;
.local .align 16 .b8 state[{state}];
.local .align 16 .b8 stack[{stack}];
.reg .b64 %k<16>;
.reg .b32 %kw<4>;
.reg .b64 %gx, %gy, %gz, %gw, %gh, %t;
.reg .b32 %g1, %g2;
{thread_id}mov.u64 %k15, %t;
ld.param.u64 %k14, [p_threads];
setp.ge.u64 %p_k, %k15, %k14;
@%p_k ret;
mov.u64 %k0, stack;
cvta.local.u64 %k0, %k0;
mov.u64 %k1, state;
cvta.local.u64 %k1, %k1;
ld.param.u64 %k2, [p_ctx];
ld.param.u64 %k3, [p_ctx_len];
mul.lo.u64 %k4, %k15, %k3;
add.u64 %k2, %k2, %k4;
setp.eq.u64 %p_k, %k3, 0;
selp.b64 %k2, 0, %k2, %p_k;
st.u32 [%k1+{status}], 0;
st.u32 [%k1+{in_cb}], 0;
ld.param.u64 %k4, [p_budget];
st.u64 [%k1+{budget}], %k4;
st.u64 [%k1+{stack_lo}], %k0;
mov.u64 %k4, {stack};
st.u64 [%k1+{stack_len}], %k4;
st.u64 [%k1+{ctx_lo}], %k2;
st.u64 [%k1+{ctx_len}], %k3;
st.u64 [%k1+{ctx_wlen}], %k3;
ld.param.u64 %k4, [p_arena];
st.u64 [%k1+{arena_lo}], %k4;
ld.param.u64 %k4, [p_arena_len];
st.u64 [%k1+{arena_len}], %k4;
ld.param.u64 %k4, [p_pid_tgid];
st.u64 [%k1+{pid_tgid}], %k4;
ld.param.u64 %k4, [p_h0];
st.u64 [%k1+{h0}], %k4;
ld.param.u64 %k4, [p_h1];
st.u64 [%k1+{h1}], %k4;
ld.param.u64 %k4, [p_h2];
st.u64 [%k1+{h2}], %k4;
ld.param.u64 %k4, [p_h3];
st.u64 [%k1+{h3}], %k4;
ld.param.u64 %k4, [p_h4];
st.u64 [%k1+{h4}], %k4;
add.u64 %k5, %k0, {stack};
call.uni (%k6), bpf_f0, (%k1, %k5, %k2, %k3, 0, 0, 0);
ld.param.u64 %k7, [p_out];
mul.lo.u64 %k8, %k15, {out_stride};
add.u64 %k7, %k7, %k8;
st.u64 [%k7], %k6;
mov.u64 %k9, 0;
$copy:
add.u64 %k10, %k1, %k9;
ld.u64 %k11, [%k10];
add.u64 %k10, %k7, %k9;
st.u64 [%k10+8], %k11;
add.u64 %k9, %k9, 8;
setp.lt.u64 %p_k, %k9, {state};
@%p_k bra $copy;
ret;
}}
"#,
        thread_id = crate::std_helpers::global_thread_id(),
        stack = state::STACK_SIZE,
        state = state::STATE_SIZE,
        status = off::STATUS,
        in_cb = off::IN_CALLBACK,
        budget = off::BUDGET,
        stack_lo = off::STACK_LO,
        stack_len = off::STACK_LEN,
        ctx_lo = off::CTX_LO,
        ctx_len = off::CTX_LEN,
        ctx_wlen = off::CTX_WLEN,
        arena_lo = off::ARENA_LO,
        arena_len = off::ARENA_LEN,
        pid_tgid = off::PID_TGID,
        h0 = state::HostWords::FIELDS[0],
        h1 = state::HostWords::FIELDS[1],
        h2 = state::HostWords::FIELDS[2],
        h3 = state::HostWords::FIELDS[3],
        h4 = state::HostWords::FIELDS[4],
        out_stride = RUN_OUT_STRIDE,
    );
    out.push_str(&s);
}

/// Bytes [`RUN_KERNEL`] writes per thread: r0, then the state block.
pub const RUN_OUT_STRIDE: u64 = 8 + state::STATE_SIZE as u64;

/// The arena slot of each map a program names, by the handle its `lddw`s load (the constant
/// the resolver gave, which a described array's [`ArrayLayout`] carries in `values`).
fn array_slots(prog: &Program, maps: &LddwMaps) -> HashMap<u64, u32> {
    let handle = |lo: i32, hi: i32| (lo as u32 as u64) | ((hi as u32 as u64) << 32);
    prog.insns()
        .iter()
        .enumerate()
        .filter_map(|(pc, insn)| match (insn, maps.0.get(&pc)) {
            (Insn::Lddw { lo, hi, .. }, Some(LddwMap::Map { slot })) => Some((handle(*lo, *hi), *slot)),
            _ => None,
        })
        .collect()
}

/// For the call at `pc` of helper `id`: the array slot and layout when it is a lookup the
/// verifier allows to inline (a described array; its key's 4 bytes proven readable).
fn inline_lookup(prog: &Program, arrays: &HashMap<u64, u32>, id: u32, pc: usize) -> Option<(u32, ArrayLayout)> {
    let layout = prog.inline_lookup(pc).filter(|_| id == 1)?;
    Some((*arrays.get(&layout.values)?, layout))
}

struct Ctx<'a> {
    shard: bool,
    prog: &'a Program,
    helpers: &'a HelperSet,
    maps: &'a LddwMaps,
    /// See [`array_slots`].
    arrays: HashMap<u64, u32>,
    used: &'a BTreeSet<u32>,
    /// `.func` names of the helpers called that may stop or fault the run.
    stops: &'a BTreeSet<String>,
}

/// Writes one eBPF function as a `.func`.
struct FunctionWriter<'a> {
    ctx: &'a Ctx<'a>,
    index: usize,
    start: usize,
    end: usize,
    body: String,
    /// Out-of-line blocks (faults, slow paths) written after the body.
    tail: String,
    labels: BTreeSet<usize>,
    next_label: usize,
    /// Whether a sharded atomic add was emitted (the prologue then loads the zone).
    shards_used: bool,
    /// Stack stores left out and lookup keys forwarded (see [`crate::stack`]).
    stack: crate::stack::StackPlan,
}

/// A value in memory incremented by three or four instructions (see
/// [`FunctionWriter::increment_at`]).
#[derive(Clone, Copy)]
struct Increment {
    size: MemSize,
    base: Reg,
    off: i16,
    /// The register that keeps the old value, if one does and it is read after.
    old: Option<Reg>,
    /// The register that holds the sum, if it is read after.
    sum: Option<Reg>,
    by: Operand,
    /// Instructions it spans.
    len: usize,
}

fn reg(r: Reg) -> String {
    format!("%r{}", r.num())
}

impl<'a> FunctionWriter<'a> {
    fn new(ctx: &'a Ctx<'a>, index: usize) -> Self {
        let f = ctx.prog.functions()[index];
        FunctionWriter {
            ctx,
            index,
            start: f.start,
            end: f.end,
            body: String::new(),
            tail: String::new(),
            labels: BTreeSet::new(),
            next_label: 0,
            shards_used: false,
            stack: crate::stack::plan(ctx.prog, f.start, f.end, crate::stack::ends_run(ctx.prog, index), |pc, id| {
                use crate::stack::CallUse;
                match (inline_lookup(ctx.prog, &ctx.arrays, id, pc), ctx.helpers.get(id)) {
                    (Some(_), _) if ctx.prog.lookup_key(pc).is_some() => CallUse::ConstantKeyLookup,
                    (Some(_), _) => CallUse::KeyLookup,
                    (None, Some(h)) if h.runs_program_code() => CallUse::RunsProgram,
                    (None, Some(h)) => CallUse::Helper(h.for_args(ctx.prog.helper_args(pc)).arguments_read()),
                    (None, None) => CallUse::Helper(5),
                }
            }),
        }
    }

    fn line(&mut self, s: impl AsRef<str>) {
        self.body.push_str(s.as_ref());
        self.body.push('\n');
    }

    fn tail_line(&mut self, s: impl AsRef<str>) {
        self.tail.push_str(s.as_ref());
        self.tail.push('\n');
    }

    fn fresh(&mut self, what: &str) -> String {
        self.next_label += 1;
        format!("$L_{what}_{}", self.next_label)
    }

    fn write(mut self, out: &mut String) {
        let insns = &self.ctx.prog.insns()[self.start..self.end];
        for (pc, insn) in (self.start..).zip(insns) {
            if let Some(t) = insn.jump_target(pc) {
                self.labels.insert(t as usize);
            }
        }
        let mut skip = 0;
        for (pc, &insn) in (self.start..).zip(insns) {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if self.labels.contains(&pc) {
                self.line(format!("$I{pc}:"));
            }
            match self.increment_at(pc) {
                Some(inc) => {
                    skip = inc.len - 1;
                    self.increment(inc);
                }
                None => self.insn(pc, insn),
            }
        }
        let _ = writeln!(
            out,
            ".func (.reg .b64 %ret) {}(.reg .b64 %st, .reg .b64 %fp, .reg .b64 %a1, .reg .b64 %a2, .reg .b64 %a3, .reg .b64 %a4, .reg .b64 %a5)",
            function_name(self.index)
        );
        out.push_str("{\n");
        out.push_str(".reg .b64 %r<11>;\n.reg .b64 %t<8>;\n.reg .b32 %w<4>;\n.reg .pred %p<3>;\n");
        out.push_str(".reg .b64 %ctxlo, %ctxlen, %ctxwlen, %arlo, %arlen, %stlo, %stlen, %zlo, %zlen, %shlo;\n");
        let mut keys: Vec<usize> = self.stack.forwarded.values().copied().collect();
        keys.sort();
        keys.dedup();
        for store in keys {
            let _ = writeln!(out, ".reg .b64 %kf{store};");
        }
        out.push_str("mov.b64 %r0, 0;\nmov.b64 %r1, %a1;\nmov.b64 %r2, %a2;\nmov.b64 %r3, %a3;\nmov.b64 %r4, %a4;\nmov.b64 %r5, %a5;\n");
        out.push_str("mov.b64 %r6, 0;\nmov.b64 %r7, 0;\nmov.b64 %r8, 0;\nmov.b64 %r9, 0;\nmov.b64 %r10, %fp;\n");
        // The bounds the body uses, read once: each field of the state a probe does not read is
        // one its caller need not write (see `crate::patch`).
        let used = |r: &str| self.body.contains(r) || self.tail.contains(r);
        for (r, field) in [
            ("%stlo", off::STACK_LO),
            ("%stlen", off::STACK_LEN),
            ("%ctxlo", off::CTX_LO),
            ("%ctxlen", off::CTX_LEN),
            ("%ctxwlen", off::CTX_WLEN),
            ("%arlo", off::ARENA_LO),
            ("%arlen", off::ARENA_LEN),
        ] {
            if used(r) || (r == "%arlo" && self.shards_used) {
                let _ = writeln!(out, "ld.u64 {r}, [%st+{field}];");
            }
        }
        if used("%fpl") {
            out.push_str(".reg .b64 %fpl;\ncvta.to.local.u64 %fpl, %fp;\n");
        }
        if used("%pctx") {
            // The context is as long as the proofs need, and 8-aligned.
            let _ = writeln!(out, ".reg .pred %pctx;\nsetp.ge.u64 %pctx, %a2, {};", self.ctx.prog.context_needs().len);
            out.push_str("and.b64 %t6, %a1, 7;\nsetp.eq.and.u64 %pctx, %t6, 0, %pctx;\n");
        }
        if self.shards_used {
            // The shard zone of the arena (none without an arena).
            out.push_str("mov.b64 %zlo, 0;\nmov.b64 %zlen, 0;\nmov.b64 %shlo, 0;\nsetp.ne.u64 %p0, %arlo, 0;\n");
            let _ = writeln!(out, "@%p0 ld.global.u64 %zlo, [%arlo+{}];", crate::maps::header::ZONE_OFF);
            let _ = writeln!(out, "@%p0 ld.global.u64 %zlen, [%arlo+{}];", crate::maps::header::ZONE_LEN);
            let _ = writeln!(out, "@%p0 ld.global.u64 %shlo, [%arlo+{}];", crate::maps::header::SHARDS_OFF);
            out.push_str("add.u64 %zlo, %zlo, %arlo;\nadd.u64 %shlo, %shlo, %arlo;\n");
        }
        out.push_str(&self.body);
        out.push_str(&self.tail);
        out.push_str("$abort:\nmov.b64 %ret, 0;\nret;\n}\n\n");
    }

    /// `%t7 = value of an operand` (immediates sign-extended to 64 bits).
    fn operand64(&mut self, src: Operand) -> String {
        match src {
            Operand::Reg(r) => reg(r),
            Operand::Imm(i) => format!("{}", i as i64),
        }
    }

    /// Records a fault (kind, argument, size word) at `pc` and leaves: a tail block.
    fn fault_block(&mut self, pc: usize, kind: u32, arg: &str, size_word: u32) -> String {
        let l = self.fresh("fault");
        self.tail_line(format!("{l}:"));
        self.tail_line(format!("st.u32 [%st+{}], {};", off::STATUS, state::STATUS_FAULT));
        self.tail_line(format!("st.u32 [%st+{}], {pc};", off::FAULT_INSN));
        self.tail_line(format!("st.u32 [%st+{}], {kind};", off::FAULT_KIND));
        self.tail_line(format!("st.u32 [%st+{}], {size_word};", off::FAULT_SIZE));
        self.tail_line(format!("st.u64 [%st+{}], {arg};", off::FAULT_ARG));
        self.tail_line("bra $abort;");
        l
    }

    /// After a call: leave if the callee stopped or faulted the run.
    fn check_status(&mut self) {
        self.line(format!("ld.u32 %w0, [%st+{}];", off::STATUS));
        self.line("setp.ne.u32 %p0, %w0, 0;");
        self.line("@%p0 bra $abort;");
    }

    /// Branches to `ok` if `[%t5, %t5 + size)` lies in `[lo, lo + len)` (registers or
    /// constants); clobbers %t6, %p1.
    fn in_region(&mut self, lo: &str, len: &str, size: u64, ok: &str) {
        self.line(format!("sub.u64 %t6, %t5, {lo};"));
        self.line(format!("setp.lt.u64 %p1, %t6, {len};"));
        self.line(format!("add.u64 %t6, %t6, {size};"));
        self.line(format!("setp.le.and.u64 %p1, %t6, {len}, %p1;"));
        self.line(format!("@%p1 bra {ok};"));
    }

    /// Checks the access at `%t5` and faults when no region holds it, unless the verifier
    /// proved it in the stack frame or in memory a map or helper gave (a map value, a ring
    /// record: the GPU's are as large as the CPU's). A proven context load of the entry
    /// function is checked by one comparison of the proofs' reach with the context's length
    /// (`%a2` at entry), and the full check runs only when the context is shorter.
    fn check_access(&mut self, pc: usize, size: MemSize, write: bool) {
        use bpftime_vm::analysis::Target;
        let access = self.ctx.prog.access(pc);
        if access.proven && matches!(access.target, Target::Stack | Target::Memory) {
            return;
        }
        let n = size.bytes() as u64;
        let ok = self.fresh("ok");
        let size_word = n as u32 | if write { 0x100 } else { 0 };
        if access.proven && access.target == Target::Context && !write && self.index == 0 {
            // Out of line, for a context shorter than the proofs' reach: in the context
            // (`%a1`, `%a2` at entry), or a fault.
            let short = self.fresh("short_ctx");
            let fault = self.fault_block(pc, state::FAULT_OUT_OF_BOUNDS, "%t5", size_word);
            self.line(format!("@!%pctx bra {short};"));
            self.line(format!("{ok}:"));
            self.tail_line(format!("{short}:"));
            self.tail_in_context(n);
            self.tail_line(format!("@%p1 bra {ok};"));
            self.tail_line(format!("bra {fault};"));
            return;
        }
        // The bounds are read from the state at each check rather than held in registers for
        // the whole function: registers are what a probe spliced into a kernel costs it.
        for (lo, len) in [(off::STACK_LO, off::STACK_LEN), (off::CTX_LO, if write { off::CTX_WLEN } else { off::CTX_LEN }), (off::ARENA_LO, off::ARENA_LEN)] {
            self.line(format!("ld.u64 %t3, [%st+{lo}];"));
            self.line(format!("ld.u64 %t4, [%st+{len}];"));
            self.in_region("%t3", "%t4", n, &ok);
        }
        let fault = self.fault_block(pc, state::FAULT_OUT_OF_BOUNDS, "%t5", size_word);
        // Last, out of line: the maps kept in host memory.
        let host = self.fresh("host");
        self.line(format!("bra {host};"));
        self.tail_line(format!("{host}:"));
        self.tail_line(format!("call.uni (%t6), bpf_host_ok, (%st, %t5, {n});"));
        self.tail_line("setp.ne.u64 %p1, %t6, 0;");
        self.tail_line(format!("@%p1 bra {ok};"));
        self.tail_line(format!("bra {fault};"));
        self.line(format!("{ok}:"));
    }

    /// Out of line: `%p1` = whether the `n` bytes at `%t5` lie in the entry function's context
    /// (`%a1`, `%a2` at entry).
    fn tail_in_context(&mut self, n: u64) {
        self.tail_line("sub.u64 %t6, %t5, %a1;");
        self.tail_line("setp.lt.u64 %p1, %t6, %a2;");
        self.tail_line(format!("add.u64 %t6, %t6, {n};"));
        self.tail_line("setp.le.and.u64 %p1, %t6, %a2, %p1;");
    }

    /// Out of line: `dst` = the `n` bytes at `%t5`, read one at a time (little-endian).
    fn tail_load_bytes(&mut self, dst: &str, n: u64) {
        self.tail_line(format!("mov.b64 {dst}, 0;"));
        for i in (0..n).rev() {
            self.tail_line(format!("ld.u8 %w0, [%t5+{i}];"));
            self.tail_line("cvt.u64.u32 %t6, %w0;");
            self.tail_line(format!("shl.b64 {dst}, {dst}, 8;"));
            self.tail_line(format!("or.b64 {dst}, {dst}, %t6;"));
        }
    }

    /// Out of line: the low `n` bytes of `src` to `%t5`, one at a time.
    fn tail_store_bytes(&mut self, src: &str, n: u64) {
        for i in 0..n {
            self.tail_line(format!("shr.u64 %t6, {src}, {};", 8 * i));
            self.tail_line("cvt.u32.u64 %w0, %t6;");
            self.tail_line(format!("st.u8 [%t5+{i}], %w0;"));
        }
    }

    /// `%t5 = base + off`.
    fn address(&mut self, base: Reg, off: i16) {
        self.line(format!("add.s64 %t5, {}, {};", reg(base), off as i64));
    }

    /// Jumps to `label` charging the loop budget first when the jump goes backwards.
    fn jump(&mut self, pc: usize, target: usize, pred: Option<&str>) {
        if target > pc {
            match pred {
                Some(p) => self.line(format!("@{p} bra $I{target};")),
                None => self.line(format!("bra $I{target};")),
            }
            return;
        }
        let cost = (pc + 1 - target) as u64;
        let skip = self.fresh("nojump");
        if let Some(p) = pred {
            self.line(format!("@!{p} bra {skip};"));
        }
        let fault = self.fault_block(pc, state::FAULT_LOOP_BUDGET, "0", 0);
        self.line(format!("ld.u64 %t6, [%st+{}];", off::BUDGET));
        self.line(format!("setp.lt.u64 %p1, %t6, {cost};"));
        self.line(format!("@%p1 bra {fault};"));
        self.line(format!("sub.u64 %t6, %t6, {cost};"));
        self.line(format!("st.u64 [%st+{}], %t6;", off::BUDGET));
        self.line(format!("bra $I{target};"));
        self.line(format!("{skip}:"));
    }

    fn insn(&mut self, pc: usize, insn: Insn) {
        match insn {
            Insn::Alu { width: Width::W64, op, dst, src } => self.alu64(op, dst, src),
            Insn::Alu { width: Width::W32, op, dst, src } => self.alu32(op, dst, src),
            Insn::Neg { width: Width::W64, dst } => self.line(format!("neg.s64 {0}, {0};", reg(dst))),
            Insn::Neg { width: Width::W32, dst } => {
                self.line(format!("cvt.u32.u64 %w0, {};", reg(dst)));
                self.line("neg.s32 %w0, %w0;");
                self.line(format!("cvt.u64.u32 {}, %w0;", reg(dst)));
            }
            Insn::Endian { order, bits, dst } => self.endian(order, bits, dst),
            Insn::Lddw { dst, kind: LddwKind::Func, lo, .. } => {
                self.line(format!("mov.b64 {}, {};", reg(dst), pc as i64 + 1 + lo as i64));
            }
            Insn::Lddw { dst, lo, hi, .. } => match self.ctx.maps.0.get(&pc) {
                Some(LddwMap::Map { slot }) => self.line(format!("mov.b64 {}, {};", reg(dst), MAP_TAG | *slot as u64)),
                Some(LddwMap::Value { slot, offset }) => {
                    // The value's storage: the arena offset in the map's descriptor.
                    let desc = crate::maps::descriptor_offset(*slot);
                    self.line(format!("ld.global.u64 %t6, [%arlo+{}];", desc + crate::maps::desc::DATA_OFF));
                    self.line("add.u64 %t6, %t6, %arlo;");
                    self.line(format!("add.u64 {}, %t6, {offset};", reg(dst)));
                }
                None => self.line(format!("mov.b64 {}, {};", reg(dst), (lo as u32 as u64) | ((hi as u32 as u64) << 32))),
            },
            Insn::LddwHigh => {}
            Insn::Load { size, signed, dst, base, off } => self.load(pc, size, signed, dst, base, off),
            Insn::Store { size, base, off, src } => self.store(pc, size, base, off, src),
            Insn::Atomic { size, op, fetch, base, off, src } => self.atomic(pc, size, op, fetch, base, off, src),
            Insn::Ja { off, .. } => {
                let target = (pc as i64 + 1 + off as i64) as usize;
                self.jump(pc, target, None);
            }
            Insn::Jump { width, cond, dst, src, off } => {
                let target = (pc as i64 + 1 + off as i64) as usize;
                self.condition(width, cond, dst, src);
                self.jump(pc, target, Some("%p0"));
            }
            Insn::Call(CallTarget::Helper(id)) => match (inline_lookup(self.ctx.prog, &self.ctx.arrays, id, pc), self.ctx.helpers.get(id)) {
                (Some((slot, layout)), _) => self.inline_array_lookup(pc, slot, layout),
                (None, Some(h)) => self.call_helper(pc, h.for_args(self.ctx.prog.helper_args(pc))),
                (None, None) => {
                    let fault = self.fault_block(pc, state::FAULT_UNKNOWN_HELPER, &id.to_string(), 0);
                    self.line(format!("bra {fault};"));
                }
            },
            Insn::CallReg(r) => self.call_dynamic(pc, r),
            Insn::Call(CallTarget::Local(off)) => {
                let target = (pc as i64 + 1 + off as i64) as usize;
                let callee = self.ctx.prog.function_starting_at(target).expect("verified call target");
                self.line(format!("sub.u64 %t0, %r10, {};", bpftime_vm::exec::FRAME_SIZE));
                self.line(format!("call.uni (%r0), {}, (%st, %t0, %r1, %r2, %r3, %r4, %r5);", function_name(callee)));
                self.check_status();
            }
            Insn::Call(CallTarget::Kfunc(_)) => unreachable!("the verifier rejects kfuncs"),
            Insn::Exit => {
                self.line("mov.b64 %ret, %r0;");
                self.line("ret;");
            }
        }
    }

    /// Whether the slots from `pc` increment a value in memory: `y = *(x + off); y += v;
    /// *(x + off) = y`, or with the old value kept, `y = *(x + off); z = y; z += v;
    /// *(x + off) = z` (64-bit, or 32-bit with a 32-bit add), both accesses proven in memory a
    /// map or helper gave, `v` a constant or a register other than `x`, `y` and `z`, and nothing
    /// jumping between them.
    fn increment_at(&self, pc: usize) -> Option<Increment> {
        use bpftime_vm::analysis::Target;
        let insns = &self.ctx.prog.insns()[..self.end];
        let Insn::Load { size, signed: false, dst: old, base, off } = insns[pc] else { return None };
        let (sum, len) = match insns.get(pc + 1) {
            Some(&Insn::Alu { op: AluOp::Mov, dst, src: Operand::Reg(src), .. }) if src == old && dst != old && dst != base => (dst, 4),
            _ => (old, 3),
        };
        if pc + len > self.end || (pc + 1..pc + len).any(|p| self.labels.contains(&p)) {
            return None;
        }
        let (Insn::Alu { width, op: AluOp::Add, dst: added, src: by }, Insn::Store { size: stored, base: to, off: at, src: Operand::Reg(value) }) =
            (insns[pc + len - 2], insns[pc + len - 1])
        else {
            return None;
        };
        let width_ok = matches!((size, width), (MemSize::DW, Width::W64) | (MemSize::W, Width::W32));
        let by_ok = match by {
            Operand::Reg(r) => r != old && r != sum && r != base,
            Operand::Imm(_) => true,
        };
        let proven = |pc: usize| {
            let a = self.ctx.prog.access(pc);
            a.proven && a.target == Target::Memory
        };
        let shape = added == sum && value == sum && stored == size && to == base && at == off && base != old;
        (width_ok && by_ok && shape && proven(pc) && proven(pc + len - 1)).then(|| Increment {
            size,
            base,
            off,
            old: (len == 4).then_some(old).filter(|&r| self.read_after(pc + len, r)),
            sum: Some(sum).filter(|&r| self.read_after(pc + len, r)),
            by,
            len,
        })
    }

    /// Whether register `r` may be read from slot `from` on before it is written (straight-line
    /// code only: a jump or a call that could read it counts as a read).
    fn read_after(&self, from: usize, r: Reg) -> bool {
        let reads = |o: Operand| o == Operand::Reg(r);
        for insn in &self.ctx.prog.insns()[from..self.end] {
            let read = match *insn {
                Insn::Alu { op: AluOp::Mov, src, .. } => reads(src),
                Insn::Alu { dst, src, .. } => dst == r || reads(src),
                Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => dst == r,
                Insn::Lddw { .. } | Insn::LddwHigh => false,
                Insn::Load { base, .. } => base == r,
                Insn::Store { base, src, .. } => base == r || reads(src),
                Insn::Exit => return r == Reg::R0,
                _ => return true,
            };
            if read {
                return true;
            }
            if insn.written_reg() == Some(r) {
                return false;
            }
        }
        true
    }

    /// A 64-bit add of `value` at `%t5` whose result nobody reads: when the address is in the
    /// shard zone (small shared arrays), out of line to this SM's shard of it (summed into the
    /// array after the launch), then on to `join`; a hot counter then does not serialise the
    /// GPU on one address.
    fn shard_branch(&mut self, value: &str, join: &str) {
        self.shards_used = true;
        let shard = self.fresh("shard");
        self.line("sub.u64 %t6, %t5, %zlo;");
        self.line("setp.lt.u64 %p1, %t6, %zlen;");
        self.line(format!("@%p1 bra {shard};"));
        self.tail_line(format!("{shard}:"));
        self.tail_line("mov.u32 %w2, %smid;");
        self.tail_line("cvt.u64.u32 %t4, %w2;");
        self.tail_line("mul.lo.u64 %t4, %t4, %zlen;");
        self.tail_line("add.u64 %t6, %t6, %t4;");
        self.tail_line("add.u64 %t6, %t6, %shlo;");
        self.tail_line(format!("red.global.add.u64 [%t6], {value};"));
        self.tail_line(format!("bra {join};"));
    }

    /// Emits an [`Increment`] as one atomic add (a reduction when the sum is not read after,
    /// to this SM's shard for a sharded array), so that threads incrementing one value lose
    /// none of their adds: a per-CPU value is one SM's on the GPU, shared by its threads, and
    /// a program written for a CPU's exclusive slot would lose counts there. The result is one
    /// the sequential code could give. A misaligned value takes the plain sequence.
    fn increment(&mut self, inc: Increment) {
        let wide = inc.size == MemSize::DW;
        let n = inc.size.bytes() as u64;
        let read = inc.old.is_some() || inc.sum.is_some();
        let (slow, join) = (self.fresh("increment_unaligned"), self.fresh("incremented"));
        self.address(inc.base, inc.off);
        // The addend, for both paths.
        let by = self.operand64(inc.by);
        self.line(format!("mov.b64 %t7, {by};"));
        self.line(format!("and.b64 %t6, %t5, {};", n - 1));
        self.line("setp.ne.u64 %p1, %t6, 0;");
        self.line(format!("@%p1 bra {slow};"));
        // From %t4, the old value: %t3 = the sum (in the access width), and the registers that
        // keep either.
        let mut results = vec!["add.u64 %t3, %t4, %t7;".to_string()];
        if !wide {
            results.push("and.b64 %t3, %t3, 0xffffffff;".into());
        }
        results.extend(inc.old.map(|r| format!("mov.b64 {}, %t4;", reg(r))));
        results.extend(inc.sum.map(|r| format!("mov.b64 {}, %t3;", reg(r))));
        if wide {
            if !read && self.ctx.shard {
                self.shard_branch("%t7", &join);
            }
            if read {
                self.line("atom.global.add.u64 %t4, [%t5], %t7;");
            } else {
                self.line("red.global.add.u64 [%t5], %t7;");
            }
        } else {
            self.line("cvt.u32.u64 %w1, %t7;");
            if read {
                self.line("atom.global.add.u32 %w3, [%t5], %w1;");
                self.line("cvt.u64.u32 %t4, %w3;");
            } else {
                self.line("red.global.add.u32 [%t5], %w1;");
            }
        }
        if read {
            results.iter().for_each(|l| self.line(l));
        }
        self.line(format!("{join}:"));
        // Misaligned: load, add and store byte by byte, as the instructions would.
        self.tail_line(format!("{slow}:"));
        self.tail_load_bytes("%t4", n);
        results.iter().for_each(|l| self.tail_line(l));
        self.tail_store_bytes("%t3", n);
        self.tail_line(format!("bra {join};"));
    }

    /// `r0 = bpf_map_lookup_elem(array, r2)` computed in place, as the helper would: the value
    /// of the u32 key (at r2, proven readable; known at load time when the verifier knows it)
    /// below `max_entries`, this SM's slot of it for a per-CPU array, else null (and null when
    /// there is no arena). The storage's offset and the slots per value are read from the map's
    /// descriptor (one cache line every thread reads).
    fn inline_array_lookup(&mut self, pc: usize, slot: u32, layout: ArrayLayout) {
        use crate::maps::desc;
        let desc = crate::maps::descriptor_offset(slot);
        let done = self.fresh("lookup_done");
        self.line("mov.b64 %r0, 0;");
        match self.ctx.prog.lookup_key(pc) {
            Some(k) if k >= layout.max_entries => return,
            Some(k) => self.line(format!("mov.u32 %w1, {k};")),
            None if self.stack.forwarded.contains_key(&pc) => {
                // The key stored in this block, from its register copy.
                let store = self.stack.forwarded[&pc];
                self.line(format!("cvt.u32.u64 %w1, %kf{store};"));
                self.line(format!("setp.ge.u32 %p1, %w1, {};", layout.max_entries));
                self.line(format!("@%p1 bra {done};"));
            }
            None => {
                // The key: one load when aligned, else its bytes one at a time (out of line).
                let bytes = self.fresh("key_bytes");
                let loaded = self.fresh("key_loaded");
                self.line("and.b64 %t6, %r2, 3;");
                self.line("setp.ne.u64 %p1, %t6, 0;");
                self.line(format!("@%p1 bra {bytes};"));
                self.line("ld.u32 %w1, [%r2];");
                self.line(format!("{loaded}:"));
                self.tail_line(format!("{bytes}:"));
                self.tail_line("ld.u8 %w1, [%r2+3];");
                for i in (0..3).rev() {
                    self.tail_line(format!("ld.u8 %w2, [%r2+{i}];"));
                    self.tail_line("shl.b32 %w1, %w1, 8;");
                    self.tail_line("or.b32 %w1, %w1, %w2;");
                }
                self.tail_line(format!("bra {loaded};"));
                self.line(format!("setp.ge.u32 %p1, %w1, {};", layout.max_entries));
                self.line(format!("@%p1 bra {done};"));
            }
        }
        self.line("setp.eq.u64 %p1, %arlo, 0;");
        self.line(format!("@%p1 bra {done};"));
        self.line(format!("ld.global.u64 %t5, [%arlo+{}];", desc + desc::DATA_OFF));
        self.line("add.u64 %t5, %t5, %arlo;");
        if layout.cpu == 0 {
            self.line(format!("mul.wide.u32 %t6, %w1, {};", layout.stride));
        } else {
            // Entries hold a slot per SM: this SM's.
            self.line(format!("ld.global.u32 %w2, [%arlo+{}];", desc + desc::SLOTS));
            self.line("mul.lo.u32 %w1, %w1, %w2;");
            self.line("mov.u32 %w3, %smid;");
            self.line("rem.u32 %w3, %w3, %w2;");
            self.line("add.u32 %w1, %w1, %w3;");
            self.line(format!("mul.wide.u32 %t6, %w1, {};", layout.stride));
        }
        self.line("add.u64 %r0, %t5, %t6;");
        self.line(format!("{done}:"));
    }

    /// Calls helper `h` with r1-r5; r0 gets its result. A helper that may stop or fault the
    /// run (it writes the status) is followed by a check of the status; others are not, and a
    /// probe calling only those never has its status read (or written by its site); those that
    /// are straight-line PTX are put in place of the call ([`GpuHelper::inline_body`]).
    fn call_helper(&mut self, pc: usize, h: &GpuHelper) {
        let name = h.func_name();
        if let Some(body) = h.inline_body().filter(|_| !self.ctx.stops.contains(&name)) {
            // A straight-line helper that cannot stop the run: its body, in a scope of its own.
            self.line("{");
            for l in body.lines() {
                let l = (1..=5).fold(l.replace("%ret", "%r0"), |l, i| l.replace(&format!("%a{i}"), &format!("%r{i}")));
                self.line(l);
            }
            self.line("}");
            return;
        }
        self.line(format!("call.uni (%r0), {name}, (%st, %r1, %r2, %r3, %r4, %r5);"));
        if !self.ctx.stops.contains(&name) {
            return;
        }
        // A helper's fault is located at its call.
        let done = self.fresh("helper_ok");
        self.line(format!("ld.u32 %w0, [%st+{}];", off::STATUS));
        self.line("setp.eq.u32 %p0, %w0, 0;");
        self.line(format!("@%p0 bra {done};"));
        self.line(format!("ld.u32 %w1, [%st+{}];", off::FAULT_INSN));
        self.line("setp.eq.u32 %p1, %w1, -1;");
        self.line(format!("@%p1 st.u32 [%st+{}], {pc};", off::FAULT_INSN));
        self.line("bra $abort;");
        self.line(format!("{done}:"));
    }

    /// `callx`: dispatches on the id among the helpers of the module.
    fn call_dynamic(&mut self, pc: usize, r: Reg) {
        let done = self.fresh("callx_done");
        let ids: Vec<u32> = self.ctx.used.iter().copied().collect();
        for id in ids {
            let next = self.fresh("callx_next");
            self.line(format!("setp.ne.u64 %p2, {}, {id};", reg(r)));
            self.line(format!("@%p2 bra {next};"));
            let h = self.ctx.helpers.get(id).expect("used helpers exist");
            self.call_helper(pc, h);
            self.line(format!("bra {done};"));
            self.line(format!("{next}:"));
        }
        let fault = self.fault_block(pc, state::FAULT_UNKNOWN_HELPER, &reg(r), 0);
        self.line(format!("bra {fault};"));
        self.line(format!("{done}:"));
    }

    fn condition(&mut self, width: Width, cond: JmpCond, dst: Reg, src: Operand) {
        let (a, b, ty_u, ty_s) = match width {
            Width::W64 => (reg(dst), self.operand64(src), "u64", "s64"),
            Width::W32 => {
                self.line(format!("cvt.u32.u64 %w0, {};", reg(dst)));
                match src {
                    Operand::Reg(r) => self.line(format!("cvt.u32.u64 %w1, {};", reg(r))),
                    Operand::Imm(i) => self.line(format!("mov.b32 %w1, {};", i)),
                }
                ("%w0".to_string(), "%w1".to_string(), "u32", "s32")
            }
        };
        let (op, ty) = match cond {
            JmpCond::Eq => ("eq", ty_u),
            JmpCond::Ne => ("ne", ty_u),
            JmpCond::Gt => ("gt", ty_u),
            JmpCond::Ge => ("ge", ty_u),
            JmpCond::Lt => ("lt", ty_u),
            JmpCond::Le => ("le", ty_u),
            JmpCond::Sgt => ("gt", ty_s),
            JmpCond::Sge => ("ge", ty_s),
            JmpCond::Slt => ("lt", ty_s),
            JmpCond::Sle => ("le", ty_s),
            JmpCond::Set => {
                let (t, bits) = if width == Width::W64 { ("%t7", "b64") } else { ("%w2", "b32") };
                self.line(format!("and.{bits} {t}, {a}, {b};"));
                self.line(format!("setp.ne.{bits} %p0, {t}, 0;"));
                return;
            }
        };
        self.line(format!("setp.{op}.{ty} %p0, {a}, {b};"));
    }

    fn alu64(&mut self, op: AluOp, dst: Reg, src: Operand) {
        let d = reg(dst);
        let s = self.operand64(src);
        match op {
            AluOp::Add => self.line(format!("add.u64 {d}, {d}, {s};")),
            AluOp::Sub => self.line(format!("sub.u64 {d}, {d}, {s};")),
            AluOp::Mul => self.line(format!("mul.lo.u64 {d}, {d}, {s};")),
            AluOp::Or => self.line(format!("or.b64 {d}, {d}, {s};")),
            AluOp::And => self.line(format!("and.b64 {d}, {d}, {s};")),
            AluOp::Xor => self.line(format!("xor.b64 {d}, {d}, {s};")),
            AluOp::Mov => self.line(format!("mov.b64 {d}, {s};")),
            AluOp::MovSx8 => self.line(format!("bfe.s64 {d}, {s}, 0, 8;")),
            AluOp::MovSx16 => self.line(format!("bfe.s64 {d}, {s}, 0, 16;")),
            AluOp::MovSx32 => self.line(format!("bfe.s64 {d}, {s}, 0, 32;")),
            AluOp::Lsh | AluOp::Rsh | AluOp::Arsh => {
                match src {
                    Operand::Reg(r) => {
                        self.line(format!("cvt.u32.u64 %w0, {};", reg(r)));
                        self.line("and.b32 %w0, %w0, 63;");
                    }
                    Operand::Imm(i) => self.line(format!("mov.b32 %w0, {};", i & 63)),
                }
                let instr = match op {
                    AluOp::Lsh => "shl.b64",
                    AluOp::Rsh => "shr.u64",
                    _ => "shr.s64",
                };
                self.line(format!("{instr} {d}, {d}, %w0;"));
            }
            AluOp::Div | AluOp::Mod | AluOp::SDiv | AluOp::SMod => {
                // An immediate divisor goes to a register first (setp takes no two immediates).
                self.line(format!("mov.b64 %t7, {s};"));
                self.division(op, 64, &d, "%t7", ["%t6", "%t5", "%t4"]);
            }
        }
    }

    fn alu32(&mut self, op: AluOp, dst: Reg, src: Operand) {
        let d = reg(dst);
        self.line(format!("cvt.u32.u64 %w0, {d};"));
        match src {
            Operand::Reg(r) => self.line(format!("cvt.u32.u64 %w1, {};", reg(r))),
            Operand::Imm(i) => self.line(format!("mov.b32 %w1, {i};")),
        }
        match op {
            AluOp::Add => self.line("add.u32 %w0, %w0, %w1;"),
            AluOp::Sub => self.line("sub.u32 %w0, %w0, %w1;"),
            AluOp::Mul => self.line("mul.lo.u32 %w0, %w0, %w1;"),
            AluOp::Or => self.line("or.b32 %w0, %w0, %w1;"),
            AluOp::And => self.line("and.b32 %w0, %w0, %w1;"),
            AluOp::Xor => self.line("xor.b32 %w0, %w0, %w1;"),
            AluOp::Mov | AluOp::MovSx32 => self.line("mov.b32 %w0, %w1;"),
            AluOp::MovSx8 => self.line("bfe.s32 %w0, %w1, 0, 8;"),
            AluOp::MovSx16 => self.line("bfe.s32 %w0, %w1, 0, 16;"),
            AluOp::Lsh => {
                self.line("and.b32 %w1, %w1, 31;");
                self.line("shl.b32 %w0, %w0, %w1;");
            }
            AluOp::Rsh => {
                self.line("and.b32 %w1, %w1, 31;");
                self.line("shr.u32 %w0, %w0, %w1;");
            }
            AluOp::Arsh => {
                self.line("and.b32 %w1, %w1, 31;");
                self.line("shr.s32 %w0, %w0, %w1;");
            }
            AluOp::Div | AluOp::Mod | AluOp::SDiv | AluOp::SMod => self.division(op, 32, "%w0", "%w1", ["%w2", "%w3", "%w2"]),
        }
        self.line(format!("cvt.u64.u32 {d}, %w0;"));
    }

    /// `x = x op divisor` for a division or modulo of `bits` bits, with the interpreter's rules:
    /// by zero, division gives 0 and modulo keeps the dividend; `INT_MIN / -1` wraps (PTX leaves
    /// both undefined, so neither reaches a `div`). `t`: scratch registers of the width for the
    /// non-zero divisor, the quotient and its negation (the last may reuse the first).
    fn division(&mut self, op: AluOp, bits: u32, x: &str, divisor: &str, t: [&str; 3]) {
        let [nz, q, neg] = t;
        let signed = matches!(op, AluOp::SDiv | AluOp::SMod);
        self.line(format!("setp.eq.u{bits} %p1, {divisor}, 0;"));
        self.line(format!("selp.b{bits} {nz}, 1, {divisor}, %p1;"));
        if signed {
            // INT_MIN / -1: divide by 1 and negate instead (neg wraps).
            self.line(format!("setp.eq.s{bits} %p2, {divisor}, -1;"));
            self.line(format!("selp.b{bits} {nz}, 1, {nz}, %p2;"));
        }
        let (ins, ty) = match op {
            AluOp::Div => ("div", 'u'),
            AluOp::Mod => ("rem", 'u'),
            AluOp::SDiv => ("div", 's'),
            _ => ("rem", 's'),
        };
        self.line(format!("{ins}.{ty}{bits} {q}, {x}, {nz};"));
        if op == AluOp::SDiv {
            self.line(format!("neg.s{bits} {neg}, {q};"));
            self.line(format!("selp.b{bits} {q}, {neg}, {q}, %p2;"));
        } else if op == AluOp::SMod {
            self.line(format!("selp.b{bits} {q}, 0, {q}, %p2;"));
        }
        if matches!(op, AluOp::Div | AluOp::SDiv) {
            self.line(format!("selp.b{bits} {x}, 0, {q}, %p1;"));
        } else {
            self.line(format!("selp.b{bits} {x}, {x}, {q}, %p1;"));
        }
    }

    fn endian(&mut self, order: ByteOrder, bits: u32, dst: Reg) {
        let d = reg(dst);
        match (order, bits) {
            (ByteOrder::ToLe, 16) => self.line(format!("and.b64 {d}, {d}, 0xffff;")),
            (ByteOrder::ToLe, 32) => self.line(format!("and.b64 {d}, {d}, 0xffffffff;")),
            (ByteOrder::ToLe, _) => {}
            (_, 16) => {
                self.line(format!("cvt.u32.u64 %w0, {d};"));
                self.line("prmt.b32 %w0, %w0, 0, 0x4401;");
                self.line(format!("cvt.u64.u32 {d}, %w0;"));
            }
            (_, 32) => {
                self.line(format!("cvt.u32.u64 %w0, {d};"));
                self.line("prmt.b32 %w0, %w0, 0, 0x0123;");
                self.line(format!("cvt.u64.u32 {d}, %w0;"));
            }
            _ => {
                self.line(format!("mov.b64 {{%w0, %w1}}, {d};"));
                self.line("prmt.b32 %w0, %w0, 0, 0x0123;");
                self.line("prmt.b32 %w1, %w1, 0, 0x0123;");
                self.line(format!("mov.b64 {d}, {{%w1, %w0}};"));
            }
        }
    }

    /// Branches to the returned label when `%t5` is not aligned to `n` bytes.
    fn unaligned_branch(&mut self, n: u64) -> String {
        let slow = self.fresh("unaligned");
        self.line(format!("and.b64 %t6, %t5, {};", n - 1));
        self.line("setp.ne.u64 %p1, %t6, 0;");
        self.line(format!("@%p1 bra {slow};"));
        slow
    }

    /// For an access at `base + off` that the verifier proved in a stack frame
    /// and aligned: the operand of a `.local` access to it, which needs neither a check nor the
    /// generic address space (frames are 16-aligned in local memory). `r10`-relative ones go
    /// through `%fpl`, the frame pointer's offset in the local window; others convert their
    /// base into `%t6`.
    fn frame_operand(&mut self, pc: usize, base: Reg, off: i16) -> Option<String> {
        let access = self.ctx.prog.access(pc);
        if !(access.proven && access.aligned && access.target == bpftime_vm::analysis::Target::Stack) {
            return None;
        }
        if base.num() == 10 {
            return Some(format!("[%fpl+{off}]"));
        }
        self.line(format!("cvta.to.local.u64 %t6, {};", reg(base)));
        Some(format!("[%t6+{off}]"))
    }

    fn load(&mut self, pc: usize, size: MemSize, signed: bool, dst: Reg, base: Reg, off: i16) {
        let n = size.bytes() as u64;
        if let Some(at) = self.frame_operand(pc, base, off) {
            let d = reg(dst);
            if n == 8 {
                self.line(format!("ld.local.u64 {d}, {at};"));
                return;
            }
            self.line(format!("ld.local.u{} %w0, {at};", 8 * n));
            self.line(match (signed, n) {
                (true, 4) => format!("cvt.s64.s32 {d}, %w0;"),
                (true, _) => format!("cvt.s64.s32 {d}, %w0;\nbfe.s64 {d}, {d}, 0, {};", 8 * n),
                (false, _) => format!("cvt.u64.u32 {d}, %w0;"),
            });
            return;
        }
        self.address(base, off);
        // A proven, aligned context load of the entry function: one test of `%pctx` (the
        // context is as long as the proofs need and 8-aligned); out of line otherwise, the
        // full check and the bytes one at a time.
        let access = self.ctx.prog.access(pc);
        let ctx_fast = n > 1 && self.index == 0 && access.proven && access.aligned && access.target == bpftime_vm::analysis::Target::Context;
        if !ctx_fast {
            self.check_access(pc, size, false);
        }
        let d = reg(dst);
        let extend = |w: &str| -> String {
            match (size, signed) {
                (MemSize::B, true) => format!("bfe.s64 {d}, {w}, 0, 8;"),
                (MemSize::H, true) => format!("bfe.s64 {d}, {w}, 0, 16;"),
                (MemSize::W, true) => format!("bfe.s64 {d}, {w}, 0, 32;"),
                _ => format!("mov.b64 {d}, {w};"),
            }
        };
        if n == 1 {
            self.line("ld.u8 %w0, [%t5];");
            self.line("cvt.u64.u32 %t7, %w0;");
            let e = extend("%t7");
            self.line(e);
            return;
        }
        let slow = if ctx_fast {
            let short = self.fresh("short_ctx");
            self.line(format!("@!%pctx bra {short};"));
            short
        } else {
            self.unaligned_branch(n)
        };
        match size {
            MemSize::DW => self.line("ld.u64 %t7, [%t5];"),
            MemSize::W => {
                self.line("ld.u32 %w0, [%t5];");
                self.line("cvt.u64.u32 %t7, %w0;");
            }
            _ => {
                self.line("ld.u16 %w0, [%t5];");
                self.line("cvt.u64.u32 %t7, %w0;");
            }
        }
        let join = self.fresh("loaded");
        self.line(format!("{join}:"));
        let e = extend("%t7");
        self.line(e);
        // The unaligned path assembles the value byte by byte, then joins.
        let fault = ctx_fast.then(|| self.fault_block(pc, state::FAULT_OUT_OF_BOUNDS, "%t5", n as u32));
        self.tail_line(format!("{slow}:"));
        if let Some(fault) = fault {
            self.tail_in_context(n);
            self.tail_line(format!("@!%p1 bra {fault};"));
        }
        self.tail_load_bytes("%t7", n);
        self.tail_line(format!("bra {join};"));
    }

    fn store(&mut self, pc: usize, size: MemSize, base: Reg, off: i16, src: Operand) {
        if self.stack.forwarded.values().any(|&s| s == pc) {
            // A lookup's key: kept in a register for it.
            let v = self.operand64(src);
            self.line(format!("mov.b64 %kf{pc}, {v};"));
        }
        if self.stack.dead.contains(&pc) {
            return;
        }
        let n = size.bytes() as u64;
        if let Some(at) = self.frame_operand(pc, base, off) {
            let v = self.operand64(src);
            if n == 8 {
                self.line(format!("st.local.u64 {at}, {v};"));
            } else {
                self.line(format!("mov.b64 %t7, {v};"));
                self.line("cvt.u32.u64 %w0, %t7;");
                self.line(format!("st.local.u{} {at}, %w0;", 8 * n));
            }
            return;
        }
        self.address(base, off);
        self.check_access(pc, size, true);
        let v = self.operand64(src);
        self.line(format!("mov.b64 %t7, {v};"));
        let n = size.bytes() as u64;
        if n == 1 {
            self.line("cvt.u32.u64 %w0, %t7;");
            self.line("st.u8 [%t5], %w0;");
            return;
        }
        let slow = self.unaligned_branch(n);
        match size {
            MemSize::DW => self.line("st.u64 [%t5], %t7;"),
            MemSize::W => {
                self.line("cvt.u32.u64 %w0, %t7;");
                self.line("st.u32 [%t5], %w0;");
            }
            _ => {
                self.line("cvt.u32.u64 %w0, %t7;");
                self.line("st.u16 [%t5], %w0;");
            }
        }
        let join = self.fresh("stored");
        self.line(format!("{join}:"));
        self.tail_line(format!("{slow}:"));
        self.tail_store_bytes("%t7", n);
        self.tail_line(format!("bra {join};"));
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(&mut self, pc: usize, size: MemSize, op: AtomicOp, fetch: bool, base: Reg, off: i16, src: Reg) {
        self.address(base, off);
        self.check_access(pc, size, true);
        let n = size.bytes() as u64;
        let misaligned = self.fault_block(pc, state::FAULT_MISALIGNED, "%t5", n as u32);
        self.line(format!("and.b64 %t6, %t5, {};", n - 1));
        self.line("setp.ne.u64 %p1, %t6, 0;");
        self.line(format!("@%p1 bra {misaligned};"));
        let s = reg(src);
        let wide = size == MemSize::DW;
        // %t4 = old value (zero-extended). On the stack (local memory) a plain
        // read-modify-write; elsewhere (the arena, maps in host memory, the run kernel's
        // context: all global memory) a global atomic.
        let local = self.fresh("atomic_local");
        let join = self.fresh("atomic_done");
        // Proven on the stack or in memory: no need to ask which.
        let access = self.ctx.prog.access(pc);
        match (access.proven, access.target) {
            (true, bpftime_vm::analysis::Target::Stack) => self.line(format!("bra {local};")),
            (true, bpftime_vm::analysis::Target::Memory) => {}
            _ => {
                self.line("sub.u64 %t6, %t5, %stlo;");
                self.line("setp.lt.u64 %p1, %t6, %stlen;");
                self.line(format!("@%p1 bra {local};"));
            }
        }
        if self.ctx.shard && wide && op == AtomicOp::Add && !fetch {
            // A 64-bit add whose old value nobody reads.
            self.shard_branch(&s, &join);
        }
        let (bits, val, exp) = if wide { ("b64", s.clone(), "%r0".to_string()) } else { ("b32", "%w1".to_string(), "%w2".to_string()) };
        if !wide {
            self.line(format!("cvt.u32.u64 %w1, {s};"));
            self.line("cvt.u32.u64 %w2, %r0;");
        }
        let old = if wide { "%t4" } else { "%w3" };
        let ins = match op {
            AtomicOp::Add => format!("atom.global.add.u{} {old}, [%t5], {val};", if wide { 64 } else { 32 }),
            AtomicOp::Or => format!("atom.global.or.{bits} {old}, [%t5], {val};"),
            AtomicOp::And => format!("atom.global.and.{bits} {old}, [%t5], {val};"),
            AtomicOp::Xor => format!("atom.global.xor.{bits} {old}, [%t5], {val};"),
            AtomicOp::Xchg => format!("atom.global.exch.{bits} {old}, [%t5], {val};"),
            AtomicOp::CmpXchg => format!("atom.global.cas.{bits} {old}, [%t5], {exp}, {val};"),
        };
        self.line(ins);
        if !wide {
            self.line("cvt.u64.u32 %t4, %w3;");
        }
        self.line(format!("{join}:"));
        if op == AtomicOp::CmpXchg {
            self.line("mov.b64 %r0, %t4;");
        } else if fetch {
            self.line(format!("mov.b64 {s}, %t4;"));
        }
        // The stack path, out of line.
        let ld = if wide { "ld.u64 %t4, [%t5];".to_string() } else { "ld.u32 %w3, [%t5];\ncvt.u64.u32 %t4, %w3;".to_string() };
        self.tail_line(format!("{local}:"));
        self.tail_line(ld);
        let new = match op {
            AtomicOp::Add => Some(format!("add.u64 %t6, %t4, {s};")),
            AtomicOp::Or => Some(format!("or.b64 %t6, %t4, {s};")),
            AtomicOp::And => Some(format!("and.b64 %t6, %t4, {s};")),
            AtomicOp::Xor => Some(format!("xor.b64 %t6, %t4, {s};")),
            AtomicOp::Xchg => Some(format!("mov.b64 %t6, {s};")),
            AtomicOp::CmpXchg => None,
        };
        match new {
            Some(compute) => self.tail_line(compute),
            None => {
                // Store the new value only when the old one equals r0 (in the access width).
                if wide {
                    self.tail_line("setp.eq.u64 %p1, %t4, %r0;");
                } else {
                    self.tail_line("cvt.u32.u64 %w2, %r0;");
                    self.tail_line("setp.eq.u32 %p1, %w3, %w2;");
                }
                self.tail_line(format!("selp.b64 %t6, {s}, %t4, %p1;"));
            }
        }
        if wide {
            self.tail_line("st.u64 [%t5], %t6;");
        } else {
            self.tail_line("cvt.u32.u64 %w2, %t6;");
            self.tail_line("st.u32 [%t5], %w2;");
        }
        self.tail_line(format!("bra {join};"));
    }
}
