//! An interpreter for exactly the PTX subset [`crate::translate`] and the helpers emit, so that
//! machines without a GPU still *execute* what we generate (as Cranelift keeps a CLIF
//! interpreter for its differential fuzzing). It is deliberately strict: an instruction or
//! operand form it does not know is a parse error, and a memory access outside every
//! allocation is an error (where a GPU would raise an illegal-address fault), so a translator
//! bug shows up here instead of being papered over.
//!
//! Model: blocks run one after another; the threads of a block interleave, a few instructions
//! at a time in a pseudo-random (seeded, so repeatable) order, as a GPU's warps do, so that code
//! which is only correct when each thread runs alone (a race between threads claiming one hash
//! slot, a count reserved by many) fails here too. Each thread has its own registers and local
//! memory; global memory is a set of allocations in one flat 64-bit address space; local
//! memory is reached through generic addresses (`cvta.local`), or through `.local` loads and
//! stores of window offsets (`cvta.to.local`), checked to stay in the window. An instruction is
//! indivisible: an atomic is a read-modify-write no other thread comes between. Warp
//! instructions (`activemask`, `shfl.sync`, `vote.sync`) wait for the lanes of their warp (32
//! consecutive threads of the block) that run them together (`WarpOp`).
//!
//! Beyond our own code it runs what nvcc writes for simple kernels, so that the stand-in driver
//! runs applications' kernels with probes spliced in: `.param` variables and calls through them
//! (nvcc's convention for device functions that are not inlined, and across units of
//! relocatable device code), instructions written over several lines.

use std::collections::HashMap;

/// Why interpretation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    /// The text is not in the subset (line number, what).
    #[error("PTX line {line}: {msg}")]
    Parse { line: usize, msg: String },
    /// An access outside every allocation: a real GPU would fault here.
    #[error("illegal address {addr:#x} ({len} bytes) in `{func}`")]
    IllegalAddress { addr: u64, len: u64, func: String },
    /// A misaligned access: a real GPU would fault here.
    #[error("misaligned {len}-byte access at {addr:#x} in `{func}`")]
    Misaligned { addr: u64, len: u64, func: String },
    /// A call to a function the module does not define.
    #[error("call to unknown function `{0}`")]
    UnknownFunction(String),
    /// More steps than allowed (a hang).
    #[error("thread ran more than {0} instructions")]
    TooManySteps(u64),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

fn perr(line: usize, msg: impl Into<String>) -> InterpError {
    InterpError::Parse { line, msg: msg.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    B8,
    B16,
    B32,
    B64,
    F32,
    F64,
    Pred,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    fn bits(self) -> u32 {
        match self {
            Ty::U8 | Ty::S8 | Ty::B8 => 8,
            Ty::U16 | Ty::S16 | Ty::B16 => 16,
            Ty::U32 | Ty::S32 | Ty::B32 | Ty::F32 => 32,
            Ty::U64 | Ty::S64 | Ty::B64 | Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }

    fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    fn mask(self, v: u64) -> u64 {
        match self.bits() {
            64 => v,
            b => v & ((1u64 << b) - 1),
        }
    }

    /// The value as a sign-extended i64 (for signed types) or zero-extended.
    fn extend(self, v: u64) -> i64 {
        let b = self.bits();
        if self.signed() && b < 64 {
            ((v << (64 - b)) as i64) >> (64 - b)
        } else {
            self.mask(v) as i64
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    TidX,
    NtidX,
    CtaidX,
    NctaidX,
    TidY,
    TidZ,
    NtidY,
    NtidZ,
    CtaidY,
    CtaidZ,
    NctaidY,
    NctaidZ,
    SmId,
    NSmId,
    LaneId,
    WarpId,
    GlobalTimer,
    Clock64,
    /// The lanes of the warp below this one.
    LanemaskLt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    Reg(u16),
    Imm(u64),
    Special(Special),
    /// Address of a variable in local memory (offset in the thread's local window).
    LocalSym(u64),
    /// Address of a module global.
    GlobalSym(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    MulLo,
    /// `mul.wide`: the full product, twice the source width.
    MulWide,
    Div,
    Rem,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BitOp {
    Popc,
    Clz,
    Brev,
}

/// Warp-collective instructions. A lane that reaches one waits (parked) until the lanes it
/// names have arrived: `activemask` names the lanes parked at the same instruction once every
/// other lane of the warp is parked too, or has had its turns without arriving (it diverged);
/// the `.sync` forms name theirs in a member mask, every lane of which must arrive at the same
/// instruction with the same mask (a lane that finishes or waits elsewhere instead is an
/// error, where a GPU's behaviour is undefined or hangs).
#[derive(Clone, Debug)]
enum WarpOp {
    /// `activemask.b32 d`.
    ActiveMask { d: u16 },
    /// `shfl.sync.idx.b32 d, a, lane, clamp, mask`.
    ShflIdx { d: u16, a: Val, lane: Val, clamp: Val, mask: Val },
    /// `vote.sync.ballot.b32 d, p, mask`.
    Ballot { d: u16, p: Val, mask: Val },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AtomOp {
    Add,
    And,
    Or,
    Xor,
    Exch,
    Cas,
    Max,
    Min,
}

#[derive(Clone, Debug)]
enum Op {
    /// `ld.param` of a `.param` variable's bytes at `off`.
    LdVar {
        ty: Ty,
        d: u16,
        var: u16,
        off: u32,
    },
    /// `st.param` into a `.param` variable.
    StVar {
        ty: Ty,
        var: u16,
        off: u32,
        v: Val,
    },
    /// A call whose arguments and result are `.param` variables.
    CallVars {
        func: String,
        ret: Option<u16>,
        args: Vec<u16>,
    },
    Mov {
        ty: Ty,
        d: u16,
        a: Val,
    },
    Unpack {
        d0: u16,
        d1: u16,
        a: Val,
    },
    Pack {
        d: u16,
        lo: Val,
        hi: Val,
    },
    CvtaLocal {
        d: u16,
        a: Val,
    },
    /// `ld.param` of a kernel parameter's bytes at `off` (a parameter is at most 8 bytes here).
    LdParam {
        ty: Ty,
        d: u16,
        param: usize,
        off: u32,
    },
    /// `local`: the address is an offset in the thread's local window (`ld.local`).
    Ld {
        ty: Ty,
        d: u16,
        base: Val,
        off: i64,
        local: bool,
    },
    St {
        ty: Ty,
        base: Val,
        off: i64,
        v: Val,
        local: bool,
    },
    /// `cvta.to.local`: a generic address to its offset in the local window.
    CvtaToLocal {
        d: u16,
        a: Val,
    },
    Bin {
        op: BinOp,
        ty: Ty,
        d: u16,
        a: Val,
        b: Val,
    },
    Mad {
        ty: Ty,
        d: u16,
        a: Val,
        b: Val,
        c: Val,
    },
    Neg {
        ty: Ty,
        d: u16,
        a: Val,
    },
    Not {
        ty: Ty,
        d: u16,
        a: Val,
    },
    Bfe {
        ty: Ty,
        d: u16,
        a: Val,
        pos: Val,
        len: Val,
    },
    Prmt {
        d: u16,
        a: Val,
        b: Val,
        sel: Val,
    },
    /// `popc`, `clz`, `brev` of a `.b32` or `.b64`.
    Bits {
        op: BitOp,
        ty: Ty,
        d: u16,
        a: Val,
    },
    /// An instruction the lanes of a warp execute together (see [`WarpOp`]).
    Warp(WarpOp),
    Cvt {
        dty: Ty,
        sty: Ty,
        d: u16,
        a: Val,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        d: u16,
        a: Val,
        b: Val,
        combine: Option<(bool, Val)>,
    },
    Selp {
        ty: Ty,
        d: u16,
        a: Val,
        b: Val,
        p: Val,
    },
    Bra {
        target: usize,
    },
    Call {
        func: String,
        ret: Option<u16>,
        args: Vec<Val>,
    },
    Ret,
    /// Ends the thread (from any depth of calls).
    Exit,
    Atom {
        op: AtomOp,
        ty: Ty,
        d: u16,
        base: Val,
        off: i64,
        b: Val,
        c: Option<Val>,
    },
    Red {
        op: AtomOp,
        ty: Ty,
        base: Val,
        off: i64,
        b: Val,
    },
    Nop,
}

#[derive(Clone, Debug)]
struct Instr {
    guard: Option<(u16, bool)>,
    op: Op,
}

#[derive(Clone, Debug, Default)]
struct Function {
    name: String,
    /// Register parameters, in order (`.func` only).
    params: Vec<u16>,
    /// Kernel parameters (`.entry` only), in order.
    kernel_params: Vec<String>,
    /// Bytes of each kernel parameter.
    kernel_param_sizes: Vec<u32>,
    ret: Option<u16>,
    nregs: usize,
    instrs: Vec<Instr>,
    local_size: u64,
    /// Bytes of each `.param` variable (nvcc's calling convention: parameters, the return
    /// value, and the argument buffers a call site declares), by index.
    var_sizes: Vec<u32>,
    /// The `.param` parameters, in order.
    var_params: Vec<u16>,
    /// The `.param` return value.
    var_ret: Option<u16>,
}

/// A parsed module.
#[derive(Clone, Debug, Default)]
pub struct Module {
    functions: HashMap<String, Function>,
    globals: Vec<(String, u64)>,
}

/// Where the numbers that stand for functions' addresses start (nothing is allocated there).
const FUNCTION_ADDRESSES: u64 = 0xf00d_0000_0000;

/// A top-level directive without its `.visible` or `.weak` linking directive.
fn without_linkage(t: &str) -> &str {
    [".visible ", ".weak "].iter().find_map(|l| t.strip_prefix(l)).unwrap_or(t).trim_start()
}

fn parse_imm(s: &str) -> Option<u64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h.trim_end_matches('U'), 16).ok()?
    } else {
        body.trim_end_matches('U').parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

fn special(s: &str) -> Option<Special> {
    Some(match s {
        "%tid.x" => Special::TidX,
        "%tid.y" => Special::TidY,
        "%tid.z" => Special::TidZ,
        "%ntid.x" => Special::NtidX,
        "%ntid.y" => Special::NtidY,
        "%ntid.z" => Special::NtidZ,
        "%ctaid.x" => Special::CtaidX,
        "%ctaid.y" => Special::CtaidY,
        "%ctaid.z" => Special::CtaidZ,
        "%nctaid.x" => Special::NctaidX,
        "%nctaid.y" => Special::NctaidY,
        "%nctaid.z" => Special::NctaidZ,
        "%smid" => Special::SmId,
        "%nsmid" => Special::NSmId,
        "%laneid" => Special::LaneId,
        "%warpid" => Special::WarpId,
        "%globaltimer" => Special::GlobalTimer,
        "%clock64" => Special::Clock64,
        "%lanemask_lt" => Special::LanemaskLt,
        _ => return None,
    })
}

/// Splits operands at top-level commas (not inside braces, brackets or parentheses).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' | '(' => {
                depth += 1;
                cur.push(c);
            }
            '}' | ']' | ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Expands `.reg .b64 %r<11>, %x, %y` into names.
fn reg_names(decl: &str) -> Vec<String> {
    let mut out = vec![];
    for part in decl.split(',') {
        let part = part.trim().trim_end_matches(';');
        if let Some((name, n)) = part.split_once('<') {
            let n: usize = n.trim_end_matches('>').parse().unwrap_or(0);
            out.extend((0..n).map(|i| format!("{name}{i}")));
        } else if !part.is_empty() {
            out.push(part.to_string());
        }
    }
    out
}

struct FnParser<'a> {
    f: Function,
    regs: HashMap<String, u16>,
    /// `.param` variables by name.
    vars: HashMap<String, u16>,
    locals: HashMap<String, u64>,
    labels: HashMap<String, usize>,
    fixups: Vec<(usize, String, usize)>,
    globals: &'a [(String, u64)],
    /// The module's functions, whose names are operands too (their addresses).
    funcs: &'a [String],
}

impl FnParser<'_> {
    /// Declares the `.param` variable of `decl` (`.param .b32 x`, `.param .align 8 .b8 x[16]`).
    fn var(&mut self, decl: &str) -> u16 {
        let decl = decl.trim().trim_end_matches(';');
        let last = decl.split_whitespace().last().unwrap_or("");
        let (name, array) = match last.split_once('[') {
            Some((n, k)) => (n, k.trim_end_matches(']').trim().parse::<u32>().ok()),
            None => (last, None),
        };
        let ty = decl.split_whitespace().filter_map(|t| t.strip_prefix('.')).filter_map(Ty::parse).next_back();
        let size = array.map_or(0, |k| k * ty.map_or(1, |t| t.bits().div_ceil(8))).max(ty.map_or(8, |t| t.bits().div_ceil(8)));
        let v = self.f.var_sizes.len() as u16;
        self.f.var_sizes.push(size);
        self.vars.insert(name.to_string(), v);
        v
    }

    fn reg(&mut self, name: &str) -> u16 {
        if let Some(&r) = self.regs.get(name) {
            return r;
        }
        let r = self.f.nregs as u16;
        self.f.nregs += 1;
        self.regs.insert(name.to_string(), r);
        r
    }

    fn known_reg(&self, line: usize, name: &str) -> Result<u16, InterpError> {
        self.regs.get(name).copied().ok_or_else(|| perr(line, format!("undeclared register `{name}`")))
    }

    fn val(&self, line: usize, s: &str) -> Result<Val, InterpError> {
        let s = s.trim();
        if let Some(sp) = special(s) {
            return Ok(Val::Special(sp));
        }
        if s.starts_with('%') {
            return Ok(Val::Reg(self.known_reg(line, s)?));
        }
        if let Some(v) = parse_imm(s) {
            return Ok(Val::Imm(v));
        }
        if let Some(&o) = self.locals.get(s) {
            return Ok(Val::LocalSym(o));
        }
        if self.globals.iter().any(|(g, _)| g == s) {
            return Ok(Val::GlobalSym(s.to_string()));
        }
        if let Some(i) = self.funcs.iter().position(|f| f == s) {
            // A function's address (a kernel a kernel launches): a number that names it here;
            // nothing calls through it.
            return Ok(Val::Imm(FUNCTION_ADDRESSES + 16 * i as u64));
        }
        Err(perr(line, format!("unknown operand `{s}`")))
    }

    /// `[%r+8]`, `[%r]`, `[name]`, `[name+8]`.
    fn mem(&self, line: usize, s: &str) -> Result<(Val, i64), InterpError> {
        let inner = s.trim().strip_prefix('[').and_then(|x| x.strip_suffix(']')).ok_or_else(|| perr(line, format!("bad memory operand `{s}`")))?;
        let (base, off) = match inner.rfind(['+', '-']) {
            Some(i) if i > 0 => {
                let off = parse_imm(&inner[i..].replace('+', "")).ok_or_else(|| perr(line, format!("bad offset in `{s}`")))?;
                // `[%r+-8]`, as nvcc writes a negative offset.
                (inner[..i].strip_suffix('+').unwrap_or(&inner[..i]), off as i64)
            }
            _ => (inner, 0),
        };
        Ok((self.val(line, base)?, off))
    }

    fn dst(&mut self, line: usize, s: &str) -> Result<u16, InterpError> {
        let s = s.trim();
        if !s.starts_with('%') {
            return Err(perr(line, format!("bad destination `{s}`")));
        }
        self.known_reg(line, s)
    }
}

impl Module {
    /// Parses a module in the subset.
    pub fn parse(text: &str) -> Result<Module, InterpError> {
        let lines: Vec<&str> = text.lines().collect();
        let mut m = Module::default();
        let funcs = crate::link::function_names(text);
        // Module globals first (a function may refer to one declared later).
        for l in &lines {
            let t = l.trim();
            let decl_of = |space: &str| without_linkage(t).starts_with(space);
            // `.const` variables live in device memory too (the host writes them).
            if (decl_of(".global") || decl_of(".const")) && t.ends_with(';') {
                let decl = t.trim_end_matches(';');
                let last = decl.split_whitespace().last().unwrap_or("");
                let (name, n) = match last.split_once('[') {
                    Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<u64>().unwrap_or(1)),
                    None => (last, 1),
                };
                let elem = if decl.contains(".b8") || decl.contains(".u8") || decl.contains(".s8") {
                    1
                } else if decl.contains("16 ") {
                    2
                } else if decl.contains("32 ") {
                    4
                } else {
                    8
                };
                m.globals.push((name.to_string(), n * elem));
            }
        }
        let mut i = 0;
        while i < lines.len() {
            let t = lines[i].trim();
            let d = without_linkage(t);
            let is_def = (d.starts_with(".func") || d.starts_with(".entry")) && !t.starts_with(".extern") && !t.ends_with(';');
            if !is_def {
                i += 1;
                continue;
            }
            // The header may span lines until `{`; one that ends in `;` declares a function
            // defined later (or in another unit).
            let mut header = String::new();
            while i < lines.len() && lines[i].trim() != "{" && !lines[i].trim().ends_with(';') {
                header.push_str(lines[i].trim());
                header.push(' ');
                i += 1;
            }
            if i < lines.len() && lines[i].trim().ends_with(';') {
                i += 1;
                continue;
            }
            if i >= lines.len() {
                return Err(perr(i, "a function without a body"));
            }
            i += 1;
            let start = i;
            let mut depth = 1;
            while i < lines.len() {
                let t = lines[i].trim();
                if t == "{" {
                    depth += 1;
                } else if t == "}" {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                i += 1;
            }
            let f = Self::parse_function(&header, &lines[start..i], start + 1, &m.globals, &funcs)?;
            m.functions.insert(f.name.clone(), f);
            i += 1;
        }
        Ok(m)
    }

    fn parse_function(header: &str, body: &[&str], first_line: usize, globals: &[(String, u64)], funcs: &[String]) -> Result<Function, InterpError> {
        let line0 = first_line.saturating_sub(1);
        let mut p = FnParser {
            f: Function::default(),
            regs: HashMap::new(),
            vars: HashMap::new(),
            locals: HashMap::new(),
            labels: HashMap::new(),
            fixups: vec![],
            globals,
            funcs,
        };
        let entry = header.contains(".entry");
        // `.func (.reg .b64 %ret) name(.reg .b64 %a, ...)` or `.entry name(.param .u64 p, ...)`.
        let mut rest = header.trim();
        rest = without_linkage(rest);
        rest = rest.trim_start_matches(".entry").trim_start_matches(".func").trim();
        if rest.starts_with('(') {
            let close = rest.find(')').ok_or_else(|| perr(line0, "bad return declaration"))?;
            let decl = rest[1..close].to_string();
            if decl.contains(".param") {
                p.f.var_ret = Some(p.var(&decl));
            } else {
                let ret = decl.split_whitespace().last().unwrap_or("").to_string();
                p.f.ret = Some(p.reg(&ret));
            }
            rest = rest[close + 1..].trim();
        }
        let open = rest.find('(').ok_or_else(|| perr(line0, "missing parameters"))?;
        p.f.name = rest[..open].trim().to_string();
        let close = rest.rfind(')').ok_or_else(|| perr(line0, "unclosed parameters"))?;
        for param in rest[open + 1..close].split(',') {
            let name = param.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("").to_string();
            if name.is_empty() {
                continue;
            }
            if entry {
                p.f.kernel_params.push(name);
                let array = param.split_once('[').and_then(|(_, n)| n.trim_end_matches(']').trim().parse::<u32>().ok());
                let ty = param.split_whitespace().filter_map(|t| t.strip_prefix('.')).filter_map(Ty::parse).next_back();
                let size = array.unwrap_or_else(|| ty.map_or(8, |t| t.bits().div_ceil(8)));
                p.f.kernel_param_sizes.push(size);
            } else if param.contains(".param") {
                let v = p.var(param);
                p.f.var_params.push(v);
            } else {
                let r = p.reg(&name);
                p.f.params.push(r);
            }
        }
        // An instruction may span lines (nvcc writes a call's operands one to a line).
        let mut pending = String::new();
        for (k, raw) in body.iter().enumerate() {
            let line = first_line + k;
            let t = raw.trim();
            let t = t.split("//").next().unwrap_or("").trim();
            if t.is_empty() || t == "{" || t == "}" {
                continue;
            }
            if t.starts_with(".param") {
                p.var(t);
                continue;
            }
            if !pending.is_empty() || (!t.ends_with(';') && !t.ends_with(':') && !t.starts_with('.')) {
                pending.push_str(t);
                pending.push(' ');
                if !t.ends_with(';') {
                    continue;
                }
                let joined = std::mem::take(&mut pending);
                let instr = Self::parse_instr(&mut p, line, joined.trim())?;
                p.f.instrs.push(instr);
                continue;
            }
            if let Some(decl) = t.strip_prefix(".reg") {
                let decl = decl.trim();
                let (_, names) = decl.split_once(' ').ok_or_else(|| perr(line, "bad .reg"))?;
                for n in reg_names(names) {
                    p.reg(&n);
                }
                continue;
            }
            if t.starts_with(".local") {
                // `.local .align 16 .b8 name[N];`
                let last = t.trim_end_matches(';').split_whitespace().last().unwrap_or("");
                let (name, n) = last.split_once('[').ok_or_else(|| perr(line, "bad .local"))?;
                let n: u64 = n.trim_end_matches(']').parse().map_err(|_| perr(line, "bad .local size"))?;
                let off = p.f.local_size.div_ceil(16) * 16;
                p.locals.insert(name.to_string(), off);
                p.f.local_size = off + n;
                continue;
            }
            if t.starts_with('.') {
                return Err(perr(line, format!("unsupported directive `{t}`")));
            }
            if let Some(label) = t.strip_suffix(':') {
                p.labels.insert(label.to_string(), p.f.instrs.len());
                continue;
            }
            let instr = Self::parse_instr(&mut p, line, t)?;
            p.f.instrs.push(instr);
        }
        for (idx, label, line) in std::mem::take(&mut p.fixups) {
            let target = *p.labels.get(&label).ok_or_else(|| perr(line, format!("unknown label `{label}`")))?;
            if let Op::Bra { target: t } = &mut p.f.instrs[idx].op {
                *t = target;
            }
        }
        Ok(p.f)
    }

    fn parse_instr(p: &mut FnParser, line: usize, t: &str) -> Result<Instr, InterpError> {
        let t = t.trim_end_matches(';').trim();
        let (guard, t) = match t.strip_prefix('@') {
            Some(rest) => {
                let (g, rest) = rest.split_once(char::is_whitespace).ok_or_else(|| perr(line, "bad guard"))?;
                let (neg, name) = match g.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, g),
                };
                (Some((p.known_reg(line, name)?, neg)), rest.trim())
            }
            None => (None, t),
        };
        let (mnemonic, operands) = match t.split_once(char::is_whitespace) {
            Some((m, o)) => (m, o.trim()),
            None => (t, ""),
        };
        let parts: Vec<&str> = mnemonic.split('.').collect();
        let ops = split_operands(operands);
        let ty_of = |s: &str| Ty::parse(s).ok_or_else(|| perr(line, format!("unknown type `.{s}` in `{mnemonic}`")));
        let last_ty = || ty_of(parts.last().copied().unwrap_or(""));
        let need = |n: usize| if ops.len() == n { Ok(()) } else { Err(perr(line, format!("`{mnemonic}` takes {n} operands, got {}", ops.len()))) };
        let op = match parts[0] {
            "mov" => {
                need(2)?;
                let ty = last_ty()?;
                if ops[0].starts_with('{') {
                    let inner: Vec<String> = split_operands(ops[0].trim_matches(|c| c == '{' || c == '}'));
                    Op::Unpack { d0: p.dst(line, &inner[0])?, d1: p.dst(line, &inner[1])?, a: p.val(line, &ops[1])? }
                } else if ops[1].starts_with('{') {
                    let inner: Vec<String> = split_operands(ops[1].trim_matches(|c| c == '{' || c == '}'));
                    Op::Pack { d: p.dst(line, &ops[0])?, lo: p.val(line, &inner[0])?, hi: p.val(line, &inner[1])? }
                } else {
                    Op::Mov { ty, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
                }
            }
            // Generic and global addresses are the same here.
            "cvta" if parts[1..] == ["to", "global", "u64"] => {
                need(2)?;
                Op::Mov { ty: Ty::U64, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "cvta" if parts[1..] == ["to", "local", "u64"] => {
                need(2)?;
                Op::CvtaToLocal { d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "cvta" if parts.get(1) == Some(&"local") => {
                need(2)?;
                Op::CvtaLocal { d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "ld" | "st" => {
                need(2)?;
                let space = parts[1..parts.len() - 1].iter().find(|s| matches!(**s, "param" | "global" | "local" | "shared" | "const"));
                let ty = last_ty()?;
                let var_of = |p: &FnParser, operand: &str| {
                    let inner = operand.trim().trim_matches(|c| c == '[' || c == ']');
                    let (base, off) = inner.split_once('+').unwrap_or((inner, "0"));
                    let var = *p.vars.get(base.trim())?;
                    let off = off.trim().parse::<u32>().ok()?;
                    (off + ty.bits() / 8 <= p.f.var_sizes[var as usize]).then_some((var, off))
                };
                if space == Some(&"param") && parts[0] == "st" {
                    let (var, off) = var_of(p, &ops[0]).ok_or_else(|| perr(line, format!("bad parameter operand `{}`", ops[0])))?;
                    Op::StVar { ty, var, off, v: p.val(line, &ops[1])? }
                } else if space == Some(&"param") && var_of(p, &ops[1]).is_some() {
                    let (var, off) = var_of(p, &ops[1]).ok_or_else(|| perr(line, "bad parameter operand"))?;
                    Op::LdVar { ty, d: p.dst(line, &ops[0])?, var, off }
                } else if parts[0] == "ld" && space == Some(&"param") {
                    let inner = ops[1].trim_matches(|c| c == '[' || c == ']');
                    let (base, off) = inner.split_once('+').unwrap_or((inner, "0"));
                    let param = p.f.kernel_params.iter().position(|x| x == base.trim()).ok_or_else(|| perr(line, format!("unknown parameter `{base}`")))?;
                    let off = off
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|o| o + ty.bits() / 8 <= 8)
                        .ok_or_else(|| perr(line, "a parameter's bytes past 8 are not in the subset"))?;
                    Op::LdParam { ty, d: p.dst(line, &ops[0])?, param, off }
                } else if space.is_some_and(|s| *s != "global" && *s != "local" && !(*s == "const" && parts[0] == "ld")) {
                    return Err(perr(line, format!("state space `.{}` is not in the subset", space.unwrap_or(&""))));
                } else if parts[0] == "ld" {
                    let (base, off) = p.mem(line, &ops[1])?;
                    Op::Ld { ty, d: p.dst(line, &ops[0])?, base, off, local: space == Some(&"local") }
                } else {
                    let (base, off) = p.mem(line, &ops[0])?;
                    Op::St { ty, base, off, v: p.val(line, &ops[1])?, local: space == Some(&"local") }
                }
            }
            "add" | "sub" | "div" | "rem" | "and" | "or" | "xor" | "shl" | "shr" | "min" | "max" => {
                need(3)?;
                let op = match parts[0] {
                    "add" => BinOp::Add,
                    "sub" => BinOp::Sub,
                    "div" => BinOp::Div,
                    "rem" => BinOp::Rem,
                    "and" => BinOp::And,
                    "or" => BinOp::Or,
                    "xor" => BinOp::Xor,
                    "shl" => BinOp::Shl,
                    "shr" => BinOp::Shr,
                    "min" => BinOp::Min,
                    _ => BinOp::Max,
                };
                Op::Bin { op, ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])? }
            }
            "mul" if matches!(parts.get(1), Some(&"lo") | Some(&"wide") | Some(&"f32") | Some(&"f64") | Some(&"rn")) => {
                need(3)?;
                let op = if parts[1] == "wide" { BinOp::MulWide } else { BinOp::MulLo };
                Op::Bin { op, ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])? }
            }
            "mad" if parts.get(1) == Some(&"lo") => {
                need(4)?;
                Op::Mad { ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])?, c: p.val(line, &ops[3])? }
            }
            "neg" => {
                need(2)?;
                Op::Neg { ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "not" => {
                need(2)?;
                Op::Not { ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "bfe" => {
                need(4)?;
                Op::Bfe { ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, pos: p.val(line, &ops[2])?, len: p.val(line, &ops[3])? }
            }
            "popc" | "clz" | "brev" => {
                need(2)?;
                let op = match parts[0] {
                    "popc" => BitOp::Popc,
                    "clz" => BitOp::Clz,
                    _ => BitOp::Brev,
                };
                Op::Bits { op, ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "activemask" | "shfl" | "vote" if guard.is_some() => return Err(perr(line, format!("a guarded `{mnemonic}` is not in the subset"))),
            "activemask" if parts[1..] == ["b32"] => {
                need(1)?;
                Op::Warp(WarpOp::ActiveMask { d: p.dst(line, &ops[0])? })
            }
            "shfl" if parts[1..] == ["sync", "idx", "b32"] => {
                need(5)?;
                let (a, lane, clamp, mask) = (p.val(line, &ops[1])?, p.val(line, &ops[2])?, p.val(line, &ops[3])?, p.val(line, &ops[4])?);
                Op::Warp(WarpOp::ShflIdx { d: p.dst(line, &ops[0])?, a, lane, clamp, mask })
            }
            "vote" if parts[1..] == ["sync", "ballot", "b32"] => {
                need(3)?;
                let (pred, mask) = (p.val(line, &ops[1])?, p.val(line, &ops[2])?);
                Op::Warp(WarpOp::Ballot { d: p.dst(line, &ops[0])?, p: pred, mask })
            }
            "prmt" => {
                need(4)?;
                Op::Prmt { d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])?, sel: p.val(line, &ops[3])? }
            }
            "cvt" => {
                need(2)?;
                let tys: Vec<&str> = parts[1..].iter().copied().filter(|s| Ty::parse(s).is_some()).collect();
                if tys.len() != 2 {
                    return Err(perr(line, format!("bad cvt `{mnemonic}`")));
                }
                Op::Cvt { dty: ty_of(tys[0])?, sty: ty_of(tys[1])?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])? }
            }
            "setp" => {
                let cmp = match parts.get(1).copied() {
                    Some("eq") => Cmp::Eq,
                    Some("ne") => Cmp::Ne,
                    Some("lt") => Cmp::Lt,
                    Some("le") => Cmp::Le,
                    Some("gt") => Cmp::Gt,
                    Some("ge") => Cmp::Ge,
                    _ => return Err(perr(line, format!("bad comparison in `{mnemonic}`"))),
                };
                // `.and` / `.or` combine the comparison with a fourth (predicate) operand.
                let combine = match parts.get(2).copied() {
                    Some("and") => Some(true),
                    Some("or") => Some(false),
                    _ => None,
                };
                need(if combine.is_some() { 4 } else { 3 })?;
                let combine = match combine {
                    Some(is_and) => Some((is_and, p.val(line, &ops[3])?)),
                    None => None,
                };
                Op::Setp { cmp, ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])?, combine }
            }
            "selp" => {
                need(4)?;
                Op::Selp { ty: last_ty()?, d: p.dst(line, &ops[0])?, a: p.val(line, &ops[1])?, b: p.val(line, &ops[2])?, p: p.val(line, &ops[3])? }
            }
            "bra" => {
                need(1)?;
                p.fixups.push((p.f.instrs.len(), ops[0].clone(), line));
                Op::Bra { target: usize::MAX }
            }
            "call" => {
                // call.uni (%ret), name, (args);   or   call.uni name, (args);
                let (ret, name, args) = match ops.len() {
                    3 => (Some(ops[0].trim_matches(|c| c == '(' || c == ')').to_string()), ops[1].clone(), ops[2].clone()),
                    2 => (None, ops[0].clone(), ops[1].clone()),
                    _ => return Err(perr(line, "bad call")),
                };
                let arg_names = split_operands(args.trim().trim_matches(|c| c == '(' || c == ')'));
                let by_param = ret.as_ref().is_some_and(|r| p.vars.contains_key(r.trim())) || arg_names.first().is_some_and(|a| p.vars.contains_key(a.trim()));
                if by_param {
                    // nvcc's convention: arguments and result in `.param` buffers.
                    let var = |n: &str| p.vars.get(n.trim()).copied().ok_or_else(|| perr(line, format!("`{n}` is not a .param variable")));
                    let ret = match &ret {
                        Some(r) => Some(var(r)?),
                        None => None,
                    };
                    let args = arg_names.iter().map(|a| var(a)).collect::<Result<_, _>>()?;
                    Op::CallVars { func: name.trim().to_string(), ret, args }
                } else {
                    let ret = match ret {
                        Some(r) => Some(p.dst(line, &r)?),
                        None => None,
                    };
                    let args = arg_names.iter().map(|a| p.val(line, a)).collect::<Result<_, _>>()?;
                    Op::Call { func: name.trim().to_string(), ret, args }
                }
            }
            "ret" => Op::Ret,
            "exit" => Op::Exit,
            "membar" | "fence" => Op::Nop,
            "atom" | "red" => {
                let op = match parts.iter().find_map(|s| match *s {
                    "add" => Some(AtomOp::Add),
                    "and" => Some(AtomOp::And),
                    "or" => Some(AtomOp::Or),
                    "xor" => Some(AtomOp::Xor),
                    "exch" => Some(AtomOp::Exch),
                    "cas" => Some(AtomOp::Cas),
                    "max" => Some(AtomOp::Max),
                    "min" => Some(AtomOp::Min),
                    _ => None,
                }) {
                    Some(o) => o,
                    None => return Err(perr(line, format!("bad atomic `{mnemonic}`"))),
                };
                let ty = last_ty()?;
                if parts[0] == "red" {
                    need(2)?;
                    let (base, off) = p.mem(line, &ops[0])?;
                    Op::Red { op, ty, base, off, b: p.val(line, &ops[1])? }
                } else {
                    need(if op == AtomOp::Cas { 4 } else { 3 })?;
                    let (base, off) = p.mem(line, &ops[1])?;
                    let c = if op == AtomOp::Cas { Some(p.val(line, &ops[3])?) } else { None };
                    Op::Atom { op, ty, d: p.dst(line, &ops[0])?, base, off, b: p.val(line, &ops[2])?, c }
                }
            }
            other => return Err(perr(line, format!("instruction `{other}` is not in the subset"))),
        };
        Ok(Instr { guard, op })
    }

    /// Bytes of module global `name` (None if there is no such global).
    pub fn global_size(&self, name: &str) -> Option<u64> {
        self.globals.iter().find(|(g, _)| g == name).map(|&(_, size)| size)
    }

    /// Bytes of each parameter of kernel `name` (None if there is no such kernel).
    pub fn kernel_param_sizes(&self, name: &str) -> Option<Vec<u32>> {
        self.functions.get(name).filter(|f| !f.kernel_params.is_empty() || f.params.is_empty()).map(|f| f.kernel_param_sizes.clone())
    }

    /// Names of the functions and kernels.
    pub fn function_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.functions.keys().cloned().collect();
        v.sort();
        v
    }
}

/// One allocation of global memory.
#[derive(Clone, Debug)]
struct Segment {
    base: u64,
    bytes: Vec<u8>,
}

/// Where a thread's local memory window starts unless [`Machine::local_base`] says otherwise:
/// an address with non-zero low bits, like a real stack's.
const LOCAL_BASE: u64 = 0x7ffd_3c41_7a40;

/// Global memory and the current thread's local memory.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    segments: Vec<Segment>,
    next: u64,
}

impl Memory {
    /// Allocates `len` zeroed bytes; returns the device address (16-aligned, with non-zero
    /// low bits, like a real heap's).
    pub fn alloc(&mut self, len: u64) -> u64 {
        if self.next == 0 {
            self.next = 0x5596_2a1c_4c30;
        }
        // Past any allocation placed where this one would go (`alloc_at`).
        let mut base = self.next;
        while let Some(s) = self.segments.iter().find(|s| base < s.base + s.bytes.len().max(1) as u64 && s.base < base + len.max(1)) {
            base = (s.base + s.bytes.len().max(1) as u64).div_ceil(4096) * 4096 + 0x130;
        }
        self.next = (base + len.max(1)).div_ceil(4096) * 4096 + 4096 + 0x130;
        self.segments.push(Segment { base, bytes: vec![0; len as usize] });
        base
    }

    /// Allocates `len` zeroed bytes at `addr` (to mirror a CPU run's addresses); fails if that
    /// overlaps an allocation.
    pub fn alloc_at(&mut self, addr: u64, len: u64) -> Result<u64, InterpError> {
        let end = addr.checked_add(len.max(1)).ok_or(InterpError::Other("allocation wraps".into()))?;
        if self.segments.iter().any(|s| addr < s.base + s.bytes.len() as u64 && s.base < end) {
            return Err(InterpError::Other(format!("{addr:#x}+{len} overlaps an allocation")));
        }
        self.segments.push(Segment { base: addr, bytes: vec![0; len as usize] });
        Ok(addr)
    }

    /// Copies `data` into memory at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), InterpError> {
        let s = self.slice_mut(addr, data.len() as u64, "host")?;
        s.copy_from_slice(data);
        Ok(())
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: u64) -> Result<Vec<u8>, InterpError> {
        let s = self.segment(addr, len).ok_or(InterpError::IllegalAddress { addr, len, func: "host".into() })?;
        let o = (addr - s.base) as usize;
        Ok(s.bytes[o..o + len as usize].to_vec())
    }

    fn segment(&self, addr: u64, len: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| addr >= s.base && addr.checked_add(len).is_some_and(|e| e <= s.base + s.bytes.len() as u64))
    }

    fn slice_mut(&mut self, addr: u64, len: u64, func: &str) -> Result<&mut [u8], InterpError> {
        let s = self
            .segments
            .iter_mut()
            .find(|s| addr >= s.base && addr.checked_add(len).is_some_and(|e| e <= s.base + s.bytes.len() as u64))
            .ok_or_else(|| InterpError::IllegalAddress { addr, len, func: func.to_string() })?;
        let o = (addr - s.base) as usize;
        Ok(&mut s.bytes[o..o + len as usize])
    }

    fn load(&self, addr: u64, len: u64, func: &str) -> Result<u64, InterpError> {
        if !addr.is_multiple_of(len) {
            return Err(InterpError::Misaligned { addr, len, func: func.into() });
        }
        let s = self.segment(addr, len).ok_or_else(|| InterpError::IllegalAddress { addr, len, func: func.into() })?;
        let o = (addr - s.base) as usize;
        let mut b = [0u8; 8];
        b[..len as usize].copy_from_slice(&s.bytes[o..o + len as usize]);
        Ok(u64::from_le_bytes(b))
    }

    fn store(&mut self, addr: u64, len: u64, v: u64, func: &str) -> Result<(), InterpError> {
        if !addr.is_multiple_of(len) {
            return Err(InterpError::Misaligned { addr, len, func: func.into() });
        }
        let s = self.slice_mut(addr, len, func)?;
        s.copy_from_slice(&v.to_le_bytes()[..len as usize]);
        Ok(())
    }
}

/// Launch geometry and the values of special registers.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    /// Blocks in x, y and z.
    pub grid: [u32; 3],
    /// Threads per block in x, y and z.
    pub block: [u32; 3],
    /// What `%nsmid` reads, and how `%smid` is derived (linear block index % SMs).
    pub sms: u32,
}

impl Default for Launch {
    fn default() -> Self {
        Launch::linear(1, 1, 4)
    }
}

impl Launch {
    /// `blocks` blocks of `threads` threads, in x only.
    pub fn linear(blocks: u32, threads: u32, sms: u32) -> Launch {
        Launch { grid: [blocks, 1, 1], block: [threads, 1, 1], sms }
    }

    /// Blocks in all.
    pub fn blocks(&self) -> u32 {
        self.grid.iter().product()
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        self.block.iter().product()
    }
}

/// The x, y, z coordinates of linear index `i` in `dims` (x fastest, as CUDA numbers them).
fn coords(i: u32, dims: [u32; 3]) -> [u32; 3] {
    let (x, y) = (dims[0].max(1), dims[1].max(1));
    [i % x, (i / x) % y, i / (x * y)]
}

/// Runs kernels of a module on simulated memory.
pub struct Machine {
    module: Module,
    /// Global memory (allocate inputs here).
    pub memory: Memory,
    globals: HashMap<String, u64>,
    /// Most instructions one thread may run.
    pub step_limit: u64,
    /// Where each thread's local memory window starts.
    pub local_base: u64,
    /// How many `atom` instructions (atomics whose old value comes back) have run since the
    /// machine was made (over all its launches; one that faults on its store counts too): those
    /// serialise on a GPU where `red` need not, so code that shares them across a warp shows
    /// here.
    pub atoms: u64,
    clock: u64,
}

/// A thread of a launch between its turns.
struct Thread {
    stack: Vec<Frame>,
    steps: u64,
    block: u32,
    thread: u32,
    /// Where its local memory window starts.
    local_base: u64,
    /// Since which turn of the scheduler it waits at a warp-collective instruction.
    parked: Option<u64>,
}

impl Thread {
    fn lane(&self) -> u32 {
        self.thread % 32
    }

    /// Where it is: its function and the index of its next instruction.
    fn site(&self) -> (&str, usize) {
        let f = self.stack.last().expect("a frame");
        (&f.func, f.pc)
    }

    /// A register or immediate operand's value in its innermost frame.
    fn operand(&self, v: &Val) -> Result<u64, InterpError> {
        match v {
            Val::Reg(r) => Ok(self.stack.last().expect("a frame").regs[*r as usize]),
            Val::Imm(i) => Ok(*i),
            other => Err(InterpError::Other(format!("operand {other:?} of a warp instruction is not in the subset"))),
        }
    }

    /// Completes the warp instruction it is parked at, with `value` for its destination.
    fn finish_warp_op(&mut self, d: u16, value: u64) {
        let f = self.stack.last_mut().expect("a frame");
        f.regs[d as usize] = value;
        f.pc += 1;
        self.steps += 1;
        self.parked = None;
    }
}

/// What a thread's turn ended with.
enum Turn {
    /// It has finished.
    Done,
    /// Its instructions for this turn ran.
    Paused,
    /// It waits at a warp-collective instruction (not yet run).
    Parked,
}

/// How many scheduler turns per live thread a lane waits at `activemask` for lanes that have
/// not arrived, before it counts them as diverged.
const ACTIVEMASK_PATIENCE: u64 = 64;

struct Frame {
    func: String,
    regs: Vec<u64>,
    pc: usize,
    ret_to: Option<u16>,
    /// Its `.param` variables' bytes.
    vars: Vec<Vec<u8>>,
    /// The caller's `.param` variable that gets the result.
    ret_var: Option<u16>,
}

/// The function a call at stack depth `depth` enters, given `args` arguments (`.param` ones
/// when `by_param`), if the subset can run it.
fn callee<'m>(module: &'m Module, func: &str, args: usize, by_param: bool, depth: usize) -> Result<&'m Function, InterpError> {
    let f = module.functions.get(func).ok_or_else(|| InterpError::UnknownFunction(func.to_string()))?;
    let takes = if by_param { f.var_params.len() } else { f.params.len() };
    if takes != args {
        return Err(InterpError::Other(format!("`{func}` takes {takes} arguments, got {args}")));
    }
    if f.local_size > 0 {
        return Err(InterpError::Other(format!("`{func}` declares local memory: not in the subset for device functions")));
    }
    if depth > 64 {
        return Err(InterpError::Other("call stack deeper than 64".into()));
    }
    Ok(f)
}

/// Fresh bytes for the `.param` variables of `f`.
fn vars_of(f: &Function) -> Vec<Vec<u8>> {
    f.var_sizes.iter().map(|&n| vec![0u8; n as usize]).collect()
}

impl Machine {
    /// A machine for `module`, with its globals allocated.
    pub fn new(module: Module) -> Machine {
        let mut memory = Memory::default();
        let mut globals = HashMap::new();
        for (name, size) in &module.globals {
            globals.insert(name.clone(), memory.alloc(*size));
        }
        Machine { module, memory, globals, step_limit: 50_000_000, local_base: LOCAL_BASE, atoms: 0, clock: 1_000_000 }
    }

    /// A machine for `module` whose globals are allocated in `memory` (device memory shared by
    /// several modules, as in one CUDA context). Swap that memory into [`Machine::memory`] for a
    /// launch and back after it.
    pub fn new_in(module: Module, memory: &mut Memory) -> Machine {
        let mut globals = HashMap::new();
        for (name, size) in &module.globals {
            globals.insert(name.clone(), memory.alloc(*size));
        }
        Machine { module, memory: Memory::default(), globals, step_limit: 50_000_000, local_base: LOCAL_BASE, atoms: 0, clock: 1_000_000 }
    }

    /// Sets what `%globaltimer` reads next; each read of it or of `%clock64` (a count of its
    /// own, three times as fast) advances it by 7.
    pub fn set_global_timer(&mut self, ns: u64) {
        self.clock = ns;
    }

    /// The device address of a module global.
    pub fn global(&self, name: &str) -> Option<u64> {
        self.globals.get(name).copied()
    }

    /// Runs kernel `name` with `args` on every thread of `launch`: block after block, the
    /// threads of a block interleaved (see the module's documentation). Thread `i` of a block
    /// has its local window at [`Machine::local_base`] plus `i` windows.
    pub fn launch(&mut self, name: &str, args: &[u64], launch: Launch) -> Result<(), InterpError> {
        let k = self.module.functions.get(name).ok_or_else(|| InterpError::UnknownFunction(name.into()))?;
        if k.kernel_params.len() != args.len() {
            return Err(InterpError::Other(format!("kernel `{name}` takes {} arguments, got {}", k.kernel_params.len(), args.len())));
        }
        let (nregs, local_size, kvars) = (k.nregs, k.local_size.max(16), vars_of(k));
        let stride = local_size.div_ceil(4096) * 4096 + 4096;
        for block in 0..launch.blocks() {
            let mut live: Vec<Thread> = (0..launch.threads())
                .map(|thread| {
                    let local_base = self.local_base + thread as u64 * stride;
                    let frame = Frame { func: name.to_string(), regs: vec![0; nregs], pc: 0, ret_to: None, vars: kvars.clone(), ret_var: None };
                    self.memory.alloc_at(local_base, local_size).map(|_| Thread { stack: vec![frame], steps: 0, block, thread, local_base, parked: None })
                })
                .collect::<Result<_, _>>()?;
            // xorshift64, seeded by the block: the same launch interleaves the same way.
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (block as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let mut tick = 0u64;
            let r = loop {
                if live.is_empty() {
                    break Ok(());
                }
                tick += 1;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % live.len() as u64) as usize;
                if live[i].parked.is_some() {
                    match self.resolve_warp_op(&mut live, i, tick).and_then(|ran| if ran { Ok(()) } else { self.unstick_warp(&mut live, i, tick) }) {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                match self.run_for(&mut live[i], args, launch, 1 + (seed >> 32) % 8) {
                    Ok(Turn::Done) => {
                        let done = live.swap_remove(i);
                        self.memory.segments.retain(|s| s.base != done.local_base);
                    }
                    Ok(Turn::Paused) => {}
                    Ok(Turn::Parked) => live[i].parked = Some(tick),
                    Err(e) => break Err(e),
                }
            };
            let windows: std::collections::HashSet<u64> = live.iter().map(|t| t.local_base).collect();
            self.memory.segments.retain(|s| !windows.contains(&s.base));
            r?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    /// The flat address of an access of `n` bytes at `addr`: itself, or for a `.local` one the
    /// window offset `addr` in the thread's local window (which it must not leave).
    fn address(memory: &Memory, addr: u64, n: u64, local: bool, local_base: u64, func: &str) -> Result<u64, InterpError> {
        if !local {
            return Ok(addr);
        }
        let window = memory.segments.iter().find(|s| s.base == local_base).map_or(0, |s| s.bytes.len() as u64);
        match addr.checked_add(n) {
            Some(end) if end <= window => Ok(local_base + addr),
            _ => Err(InterpError::IllegalAddress { addr, len: n, func: func.to_string() }),
        }
    }

    /// When every lane of `live[i]`'s warp waits at a warp instruction and `live[i]`'s cannot
    /// run yet: runs another lane's if one can (an `activemask` always can then), else the warp
    /// is stuck, which is an error (on a GPU it would hang, or read undefined values).
    fn unstick_warp(&self, live: &mut [Thread], i: usize, tick: u64) -> Result<(), InterpError> {
        let warp = live[i].thread / 32;
        let peers: Vec<usize> = (0..live.len()).filter(|&j| live[j].thread / 32 == warp).collect();
        if !peers.iter().all(|&j| live[j].parked.is_some()) {
            return Ok(());
        }
        for &j in &peers {
            if live[j].parked.is_some() && self.resolve_warp_op(live, j, tick)? {
                return Ok(());
            }
        }
        let (func, pc) = live[i].site();
        Err(InterpError::Other(format!(
            "`{func}`: the lanes of warp {warp} all wait at .sync instructions (lane {} at {pc}) whose member masks name lanes waiting elsewhere",
            live[i].lane()
        )))
    }

    /// Runs the warp instruction `live[i]` is parked at, for it and the lanes that run it with
    /// it, if they are all there (see [`WarpOp`]): true when it ran, false when they wait.
    fn resolve_warp_op(&self, live: &mut [Thread], i: usize, tick: u64) -> Result<bool, InterpError> {
        let warp = live[i].thread / 32;
        let (func, pc) = live[i].site();
        let func = func.to_string();
        let Some(Op::Warp(op)) = self.module.functions.get(&func).and_then(|f| f.instrs.get(pc)).map(|ins| &ins.op) else {
            return Err(InterpError::Other(format!("`{func}`: a thread waits at instruction {pc}, which is not a warp instruction")));
        };
        let peers: Vec<usize> = (0..live.len()).filter(|&j| live[j].thread / 32 == warp).collect();
        let all_parked = peers.iter().all(|&j| live[j].parked.is_some());
        let here: Vec<usize> = peers.iter().copied().filter(|&j| live[j].parked.is_some() && live[j].site() == (func.as_str(), pc)).collect();
        let lanes = |group: &[usize]| group.iter().fold(0u32, |m, &j| m | 1 << live[j].lane());
        match op {
            WarpOp::ActiveMask { d } => {
                let waited = tick - live[i].parked.unwrap_or(tick);
                if !all_parked && waited <= ACTIVEMASK_PATIENCE * live.len() as u64 {
                    return Ok(false);
                }
                let (d, mask) = (*d, lanes(&here));
                for &j in &here {
                    live[j].finish_warp_op(d, mask as u64);
                }
            }
            WarpOp::ShflIdx { mask, .. } | WarpOp::Ballot { mask, .. } => {
                let m = live[i].operand(mask)? as u32;
                let mut group = vec![];
                for &j in &here {
                    let mj = live[j].operand(mask)? as u32;
                    if mj & 1 << live[j].lane() == 0 {
                        return Err(InterpError::Other(format!(
                            "`{func}`: lane {} runs a .sync instruction whose member mask {mj:#x} leaves it out",
                            live[j].lane()
                        )));
                    }
                    if mj == m {
                        group.push(j);
                    }
                }
                let missing = m & !lanes(&group);
                if missing & !lanes(&peers) != 0 {
                    return Err(InterpError::Other(format!(
                        "`{func}`: lanes {:#x} of the member mask {m:#x} have finished or do not exist, and never reach its .sync instruction {pc}",
                        missing & !lanes(&peers)
                    )));
                }
                if missing != 0 {
                    // They may yet come (or the warp is stuck: see `launch`).
                    return Ok(false);
                }
                let mut values = [None; 32];
                for &j in &group {
                    let t = &live[j];
                    values[t.lane() as usize] = Some(match op {
                        WarpOp::ShflIdx { a, .. } => t.operand(a)? & 0xffff_ffff,
                        WarpOp::Ballot { p, .. } => (t.operand(p)? != 0) as u64,
                        WarpOp::ActiveMask { .. } => 0,
                    });
                }
                for &j in &group {
                    let lane = live[j].lane();
                    let (d, value) = match op {
                        WarpOp::ShflIdx { d, lane: src, clamp, .. } => {
                            // The source lane as the PTX ISA defines `.idx`: within the
                            // segment `clamp` picks, else the lane's own value.
                            let (b, c) = (live[j].operand(src)? as u32, live[j].operand(clamp)? as u32);
                            let seg = (c >> 8) & 31;
                            let min = lane & seg;
                            let max = min | (c & 31 & !seg);
                            let k = min | (b & 31 & !seg);
                            let k = if k <= max { k } else { lane };
                            let v = values[k as usize]
                                .ok_or_else(|| InterpError::Other(format!("`{func}`: shfl.sync reads lane {k}, outside its member mask {m:#x}")))?;
                            (*d, v)
                        }
                        WarpOp::Ballot { d, .. } => (*d, (0..32).filter(|&k| values[k] == Some(1)).fold(0u64, |acc, k| acc | 1 << k)),
                        WarpOp::ActiveMask { d } => (*d, 0),
                    };
                    live[j].finish_warp_op(d, value);
                }
            }
        }
        Ok(true)
    }

    /// Runs thread `t` for at most `quantum` instructions, or until it reaches a warp
    /// instruction.
    fn run_for(&mut self, t: &mut Thread, args: &[u64], launch: Launch, quantum: u64) -> Result<Turn, InterpError> {
        let (block, thread, local_base, stack) = (t.block, t.thread, t.local_base, &mut t.stack);
        for _ in 0..quantum {
            t.steps += 1;
            if t.steps > self.step_limit {
                return Err(InterpError::TooManySteps(self.step_limit));
            }
            let depth = stack.len();
            let frame = stack.last_mut().expect("a frame");
            let f = &self.module.functions[&frame.func];
            let Some(instr) = f.instrs.get(frame.pc) else {
                return Err(InterpError::Other(format!("`{}` ran off its end", f.name)));
            };
            frame.pc += 1;
            if let Some((p, neg)) = instr.guard {
                if (frame.regs[p as usize] != 0) == neg {
                    continue;
                }
            }
            if let Op::Warp(_) = instr.op {
                // Run by `resolve_warp_op` once the lanes it needs are there.
                frame.pc -= 1;
                t.steps -= 1;
                return Ok(Turn::Parked);
            }
            let fname: &str = &f.name;
            macro_rules! v {
                ($val:expr) => {
                    match $val {
                        Val::Reg(r) => frame.regs[*r as usize],
                        Val::Imm(i) => *i,
                        Val::LocalSym(o) => *o,
                        Val::GlobalSym(g) => self.globals[g],
                        Val::Special(s) => {
                            self.clock += 7;
                            let (t, b) = (coords(thread, launch.block), coords(block, launch.grid));
                            match s {
                                Special::TidX => t[0] as u64,
                                Special::TidY => t[1] as u64,
                                Special::TidZ => t[2] as u64,
                                Special::NtidX => launch.block[0] as u64,
                                Special::NtidY => launch.block[1] as u64,
                                Special::NtidZ => launch.block[2] as u64,
                                Special::CtaidX => b[0] as u64,
                                Special::CtaidY => b[1] as u64,
                                Special::CtaidZ => b[2] as u64,
                                Special::NctaidX => launch.grid[0] as u64,
                                Special::NctaidY => launch.grid[1] as u64,
                                Special::NctaidZ => launch.grid[2] as u64,
                                Special::SmId => (block % launch.sms.max(1)) as u64,
                                Special::NSmId => launch.sms as u64,
                                Special::LaneId => (thread % 32) as u64,
                                Special::WarpId => (thread / 32) as u64,
                                Special::GlobalTimer => self.clock,
                                // Another monotonic count, not the timer's own values.
                                Special::Clock64 => self.clock.wrapping_mul(3).wrapping_add(0x5a5a),
                                Special::LanemaskLt => (1u64 << (thread % 32)) - 1,
                            }
                        }
                    }
                };
            }
            match &instr.op {
                Op::Nop => {}
                Op::Mov { ty, d, a } => {
                    let x = v!(a);
                    frame.regs[*d as usize] = if *ty == Ty::Pred { (x != 0) as u64 } else { ty.mask(x) };
                }
                Op::Unpack { d0, d1, a } => {
                    let x = v!(a);
                    frame.regs[*d0 as usize] = x & 0xffff_ffff;
                    frame.regs[*d1 as usize] = x >> 32;
                }
                Op::Pack { d, lo, hi } => {
                    let x = (v!(lo) & 0xffff_ffff) | (v!(hi) << 32);
                    frame.regs[*d as usize] = x;
                }
                Op::CvtaLocal { d, a } => {
                    let x = v!(a);
                    frame.regs[*d as usize] = local_base + x;
                }
                Op::CvtaToLocal { d, a } => {
                    let x = v!(a);
                    frame.regs[*d as usize] = x.wrapping_sub(local_base);
                }
                Op::LdParam { ty, d, param, off } => {
                    let bits = ty.bits().min(64);
                    let x = args[*param] >> (8 * off) & if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
                    frame.regs[*d as usize] = if ty.signed() { ty.extend(x) as u64 } else { x };
                }
                Op::Ld { ty, d, base, off, local } => {
                    let n = (ty.bits() / 8) as u64;
                    let addr = Self::address(&self.memory, v!(base).wrapping_add(*off as u64), n, *local, local_base, fname)?;
                    let x = self.memory.load(addr, n, fname)?;
                    frame.regs[*d as usize] = if ty.signed() { ty.extend(x) as u64 } else { x };
                }
                Op::St { ty, base, off, v: val, local } => {
                    let addr = Self::address(&self.memory, v!(base).wrapping_add(*off as u64), (ty.bits() / 8) as u64, *local, local_base, fname)?;
                    let x = v!(val);
                    self.memory.store(addr, (ty.bits() / 8) as u64, x, fname)?;
                }
                Op::Bin { op, ty, d, a, b } => {
                    let (x, y) = (v!(a), v!(b));
                    frame.regs[*d as usize] = bin(*op, *ty, x, y).map_err(InterpError::Other)?;
                }
                Op::Mad { ty, d, a, b, c } => {
                    let x = v!(a).wrapping_mul(v!(b)).wrapping_add(v!(c));
                    frame.regs[*d as usize] = ty.mask(x);
                }
                Op::Neg { ty, d, a } => {
                    let x = v!(a);
                    frame.regs[*d as usize] = ty.mask(x.wrapping_neg());
                }
                Op::Not { ty, d, a } => {
                    let x = v!(a);
                    frame.regs[*d as usize] = if *ty == Ty::Pred { (x == 0) as u64 } else { ty.mask(!x) };
                }
                Op::Bfe { ty, d, a, pos, len } => {
                    let (x, pos, len) = (ty.mask(v!(a)), v!(pos) & 0xff, v!(len) & 0xff);
                    let bits = ty.bits() as u64;
                    let r = if len == 0 {
                        0
                    } else {
                        let pos = pos.min(bits);
                        let len = len.min(bits);
                        let field = if pos >= bits { 0 } else { x >> pos };
                        let mask = if len >= 64 { u64::MAX } else { (1u64 << len) - 1 };
                        let mut f = field & mask;
                        // Signed: the sign bit is bit pos+len-1 (or the top bit if beyond).
                        if ty.signed() {
                            let sbit = (pos + len - 1).min(bits - 1);
                            let negative = x >> sbit & 1 == 1;
                            if negative && len < 64 {
                                f |= !mask;
                            }
                        }
                        ty.mask(f)
                    };
                    frame.regs[*d as usize] = r;
                }
                Op::Bits { op, ty, d, a } => {
                    let (x, bits) = (ty.mask(v!(a)), ty.bits());
                    frame.regs[*d as usize] = match op {
                        BitOp::Popc => x.count_ones() as u64,
                        BitOp::Clz => (x.leading_zeros() - (64 - bits)) as u64,
                        BitOp::Brev => x.reverse_bits() >> (64 - bits),
                    };
                }
                Op::Warp(_) => return Err(InterpError::Other("a warp instruction run alone".into())),
                Op::Prmt { d, a, b, sel } => {
                    let bytes = ((v!(b) & 0xffff_ffff) << 32 | (v!(a) & 0xffff_ffff)).to_le_bytes();
                    let s = v!(sel);
                    let mut r = 0u32;
                    for i in 0..4 {
                        let nib = (s >> (4 * i)) & 0xf;
                        let byte = bytes[(nib & 7) as usize];
                        let byte = if nib & 8 != 0 {
                            if byte & 0x80 != 0 {
                                0xff
                            } else {
                                0
                            }
                        } else {
                            byte
                        };
                        r |= (byte as u32) << (8 * i);
                    }
                    frame.regs[*d as usize] = r as u64;
                }
                Op::Cvt { dty, sty, d, a } => {
                    let x = sty.extend(v!(a)) as u64;
                    frame.regs[*d as usize] = dty.mask(x);
                }
                Op::Setp { cmp, ty, d, a, b, combine } => {
                    let (x, y) = (v!(a), v!(b));
                    let r = if ty.signed() {
                        compare(*cmp, ty.extend(x) as i128, ty.extend(y) as i128)
                    } else {
                        compare(*cmp, ty.mask(x) as i128, ty.mask(y) as i128)
                    };
                    let r = match combine {
                        Some((true, q)) => r && v!(q) != 0,
                        Some((false, q)) => r || v!(q) != 0,
                        None => r,
                    };
                    frame.regs[*d as usize] = r as u64;
                }
                Op::Selp { ty, d, a, b, p } => {
                    let x = if v!(p) != 0 { v!(a) } else { v!(b) };
                    frame.regs[*d as usize] = ty.mask(x);
                }
                Op::Bra { target } => frame.pc = *target,
                Op::Call { func, ret, args: call_args } => {
                    let callee = callee(&self.module, func, call_args.len(), false, depth)?;
                    let mut regs = vec![0u64; callee.nregs];
                    for (p, a) in callee.params.iter().zip(call_args) {
                        regs[*p as usize] = v!(a);
                    }
                    let ret_to = *ret;
                    let name = func.clone();
                    let vars = vars_of(callee);
                    stack.push(Frame { func: name, regs, pc: 0, ret_to, vars, ret_var: None });
                }
                Op::CallVars { func, ret, args: call_args } => {
                    let callee = callee(&self.module, func, call_args.len(), true, depth)?;
                    let mut vars = vars_of(callee);
                    for (&to, &from) in callee.var_params.iter().zip(call_args) {
                        let (dst, src) = (&mut vars[to as usize], &frame.vars[from as usize]);
                        let n = dst.len().min(src.len());
                        dst[..n].copy_from_slice(&src[..n]);
                    }
                    let regs = vec![0u64; callee.nregs];
                    let name = func.clone();
                    stack.push(Frame { func: name, regs, pc: 0, ret_to: None, vars, ret_var: *ret });
                }
                Op::LdVar { ty, d, var, off } => {
                    let n = (ty.bits() / 8) as usize;
                    let bytes = &frame.vars[*var as usize][*off as usize..*off as usize + n];
                    let x = bytes.iter().rev().fold(0u64, |acc, &b| acc << 8 | b as u64);
                    frame.regs[*d as usize] = if ty.signed() { ty.extend(x) as u64 } else { x };
                }
                Op::StVar { ty, var, off, v: val } => {
                    let n = (ty.bits() / 8) as usize;
                    let x = v!(val);
                    frame.vars[*var as usize][*off as usize..*off as usize + n].copy_from_slice(&x.to_le_bytes()[..n]);
                }
                Op::Exit => return Ok(Turn::Done),
                Op::Ret => {
                    let done = stack.pop().expect("a frame");
                    let f = &self.module.functions[&done.func];
                    let value = f.ret.map(|r| done.regs[r as usize]).unwrap_or(0);
                    match stack.last_mut() {
                        Some(caller) => {
                            if let Some(d) = done.ret_to {
                                caller.regs[d as usize] = value;
                            }
                            if let (Some(to), Some(from)) = (done.ret_var, f.var_ret) {
                                let (dst, src) = (&mut caller.vars[to as usize], &done.vars[from as usize]);
                                let n = dst.len().min(src.len());
                                dst[..n].copy_from_slice(&src[..n]);
                            }
                        }
                        None => return Ok(Turn::Done),
                    }
                }
                Op::Atom { op, ty, d, base, off, b, c } => {
                    let addr = v!(base).wrapping_add(*off as u64);
                    let n = (ty.bits() / 8) as u64;
                    let (y, z) = (v!(b), c.as_ref().map(|c| v!(c)));
                    let old = self.memory.load(addr, n, fname)?;
                    self.atoms += 1;
                    let new = atom(*op, *ty, old, y, z);
                    self.memory.store(addr, n, new, fname)?;
                    frame.regs[*d as usize] = old;
                }
                Op::Red { op, ty, base, off, b } => {
                    let addr = v!(base).wrapping_add(*off as u64);
                    let n = (ty.bits() / 8) as u64;
                    let y = v!(b);
                    let old = self.memory.load(addr, n, fname)?;
                    self.memory.store(addr, n, atom(*op, *ty, old, y, None), fname)?;
                }
            }
        }
        Ok(Turn::Paused)
    }
}

fn compare(cmp: Cmp, x: impl Into<i128>, y: impl Into<i128>) -> bool {
    let (x, y) = (x.into(), y.into());
    match cmp {
        Cmp::Eq => x == y,
        Cmp::Ne => x != y,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
    }
}

/// Floating-point arithmetic (`add.f32`, `mul.rn.f64`, ...), round to nearest.
fn float_bin(op: BinOp, ty: Ty, x: u64, y: u64) -> Result<u64, String> {
    macro_rules! arith {
        ($t:ty, $from:expr, $to:expr) => {{
            let (a, b): ($t, $t) = ($from(x), $from(y));
            let r = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::MulLo => a * b,
                BinOp::Div => a / b,
                BinOp::Min => a.min(b),
                BinOp::Max => a.max(b),
                _ => return Err(format!("{op:?} is not a floating-point operation")),
            };
            $to(r)
        }};
    }
    Ok(match ty {
        Ty::F32 => arith!(f32, |v: u64| f32::from_bits(v as u32), |r: f32| r.to_bits() as u64),
        _ => arith!(f64, f64::from_bits, f64::to_bits),
    })
}

fn bin(op: BinOp, ty: Ty, x: u64, y: u64) -> Result<u64, String> {
    if matches!(ty, Ty::F32 | Ty::F64) {
        return float_bin(op, ty, x, y);
    }
    let bits = ty.bits();
    let (sx, sy) = (ty.extend(x), ty.extend(y));
    let (ux, uy) = (ty.mask(x), ty.mask(y));
    let r = match op {
        BinOp::Add => x.wrapping_add(y),
        BinOp::Sub => x.wrapping_sub(y),
        BinOp::MulLo => x.wrapping_mul(y),
        BinOp::MulWide => {
            let r = if ty.signed() { (sx as i128 * sy as i128) as u64 } else { ux.wrapping_mul(uy) };
            // Twice the source width: no masking to `ty` below.
            return Ok(if bits >= 32 { r } else { r & ((1u64 << (2 * bits)) - 1) });
        }
        BinOp::And => x & y,
        BinOp::Or => x | y,
        BinOp::Xor => x ^ y,
        BinOp::Div | BinOp::Rem => {
            if uy == 0 {
                return Err("division by zero (undefined in PTX: the translator must never emit it)".into());
            }
            if ty.signed() {
                if sy == -1 && sx == ty.extend(1u64 << (bits - 1)) {
                    return Err("signed division overflow (undefined in PTX)".into());
                }
                (if op == BinOp::Div { sx.wrapping_div(sy) } else { sx.wrapping_rem(sy) }) as u64
            } else if op == BinOp::Div {
                ux / uy
            } else {
                ux % uy
            }
        }
        BinOp::Shl => {
            let s = y & 0xffff_ffff;
            if s >= bits as u64 {
                0
            } else {
                x << s
            }
        }
        BinOp::Shr => {
            let s = (y & 0xffff_ffff).min(bits as u64);
            if ty.signed() {
                let v = sx >> s.min(63);
                v as u64
            } else if s >= bits as u64 {
                0
            } else {
                ux >> s
            }
        }
        BinOp::Min => {
            if ty.signed() {
                sx.min(sy) as u64
            } else {
                ux.min(uy)
            }
        }
        BinOp::Max => {
            if ty.signed() {
                sx.max(sy) as u64
            } else {
                ux.max(uy)
            }
        }
    };
    Ok(ty.mask(r))
}

fn atom(op: AtomOp, ty: Ty, old: u64, y: u64, z: Option<u64>) -> u64 {
    let r = match op {
        AtomOp::Add => old.wrapping_add(y),
        AtomOp::And => old & y,
        AtomOp::Or => old | y,
        AtomOp::Xor => old ^ y,
        AtomOp::Exch => y,
        AtomOp::Cas => {
            if ty.mask(old) == ty.mask(y) {
                z.unwrap_or(old)
            } else {
                old
            }
        }
        AtomOp::Max => {
            if ty.signed() {
                ty.extend(old).max(ty.extend(y)) as u64
            } else {
                ty.mask(old).max(ty.mask(y))
            }
        }
        AtomOp::Min => {
            if ty.signed() {
                ty.extend(old).min(ty.extend(y)) as u64
            } else {
                ty.mask(old).min(ty.mask(y))
            }
        }
    };
    ty.mask(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Device functions called as nvcc calls them: arguments and result in `.param` buffers
    /// the call site declares, a call written over several lines, a struct passed by value,
    /// a `.weak` kernel and a declaration before the definition.
    const CALLS: &str = r#"
.version 8.0
.target sm_75
.address_size 64

.func  (.param .b32 func_retval0) _Z6triplei(
	.param .b32 _Z6triplei_param_0
)
;
.func  (.param .b32 func_retval0) _Z3sum4Pair(
	.param .align 4 .b8 _Z3sum4Pair_param_0[8]
)
{
	.reg .b32 	%r<4>;
	ld.param.u32 	%r1, [_Z3sum4Pair_param_0];
	ld.param.u32 	%r2, [_Z3sum4Pair_param_0+4];
	add.s32 	%r3, %r1, %r2;
	st.param.b32 	[func_retval0+0], %r3;
	ret;
}
.func  (.param .b32 func_retval0) _Z6triplei(
	.param .b32 _Z6triplei_param_0
)
{
	.reg .b32 	%r<3>;
	ld.param.u32 	%r1, [_Z6triplei_param_0];
	mul.lo.s32 	%r2, %r1, 3;
	st.param.b32 	[func_retval0+0], %r2;
	ret;
}
.weak .entry _Z1kPi(
	.param .u64 _Z1kPi_param_0
)
{
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<5>;
	ld.param.u64 	%rd1, [_Z1kPi_param_0];
	cvta.to.global.u64 	%rd2, %rd1;
	mov.u32 	%r1, %tid.x;
	{ // callseq 0, 0
	.param .b32 param0;
	st.param.b32 	[param0+0], %r1;
	.param .b32 retval0;
	call.uni (retval0), 
	_Z6triplei, 
	(
	param0
	);
	ld.param.b32 	%r2, [retval0+0];
	} // callseq 0
	{ // callseq 1, 0
	.param .align 4 .b8 param0[8];
	st.param.b32 	[param0+0], %r2;
	st.param.b32 	[param0+4], 100;
	.param .b32 retval0;
	call.uni (retval0), 
	_Z3sum4Pair, 
	(
	param0
	);
	ld.param.b32 	%r3, [retval0+0];
	} // callseq 1
	mul.wide.u32 	%rd3, %r1, 4;
	add.s64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r3;
	ret;
}
"#;

    #[test]
    fn device_functions_take_and_return_param_buffers() {
        let mut m = Machine::new(Module::parse(CALLS).unwrap());
        let out = m.memory.alloc(4 * 8);
        m.launch("_Z1kPi", &[out], Launch::linear(1, 8, 1)).unwrap();
        let got: Vec<u32> = m.memory.read(out, 32).unwrap().chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, (0..8).map(|t| 3 * t + 100).collect::<Vec<u32>>());
    }

    /// Each lane writes what the warp instructions gave it: its `activemask`, the thread id of
    /// the lowest lane in that mask (through `shfl.sync`), the ballot of odd thread ids, and its
    /// rank among the mask's lanes. Thread 0 first spins `spin` times.
    const WARP: &str = r#"
.version 7.0
.target sm_75
.address_size 64
.visible .entry warp(.param .u64 out, .param .u32 spin, .param .u32 width)
{
.reg .b32 %r<13>;
.reg .b64 %rd<4>;
.reg .pred %p<3>;
ld.param.u64 %rd1, [out];
ld.param.u32 %r10, [spin];
ld.param.u32 %r12, [width];
mov.u32 %r1, %tid.x;
setp.ne.u32 %p1, %r1, 0;
@%p1 bra $go;
mov.u32 %r11, 0;
$spin:
setp.ge.u32 %p2, %r11, %r10;
@%p2 bra $go;
add.u32 %r11, %r11, 1;
bra $spin;
$go:
activemask.b32 %r2;
setp.eq.u32 %p2, %r12, 0;
@%p2 bra $all;
mov.b32 %r2, %r12;
$all:
brev.b32 %r3, %r2;
clz.b32 %r3, %r3;
shfl.sync.idx.b32 %r4, %r1, %r3, 31, %r2;
and.b32 %r5, %r1, 1;
setp.ne.u32 %p1, %r5, 0;
vote.sync.ballot.b32 %r6, %p1, %r2;
mov.u32 %r7, %lanemask_lt;
and.b32 %r7, %r7, %r2;
popc.b32 %r7, %r7;
mul.wide.u32 %rd2, %r1, 16;
add.u64 %rd3, %rd1, %rd2;
st.global.u32 [%rd3], %r2;
st.global.u32 [%rd3+4], %r4;
st.global.u32 [%rd3+8], %r6;
st.global.u32 [%rd3+12], %r7;
ret;
}
"#;

    /// Runs [`WARP`] on `threads` threads; per thread (mask, leader's id, ballot, rank).
    fn warp_run(threads: u32, spin: u64, width: u64) -> Result<Vec<[u32; 4]>, InterpError> {
        let mut m = Machine::new(Module::parse(WARP).unwrap());
        let out = m.memory.alloc(16 * threads as u64);
        m.launch("warp", &[out, spin, width], Launch::linear(1, threads, 1))?;
        let words: Vec<u32> = m.memory.read(out, 16 * threads as u64).unwrap().chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        Ok(words.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
    }

    #[test]
    fn lanes_that_arrive_together_run_warp_instructions_together() {
        // A full warp and a warp of 8 lanes.
        let got = warp_run(40, 0, 0).unwrap();
        for (t, row) in got.iter().enumerate() {
            let (warp, lane) = (t as u32 / 32, t as u32 % 32);
            let mask = if warp == 0 { u32::MAX } else { 0xff };
            assert_eq!(*row, [mask, 32 * warp, 0xaaaa_aaaa & mask, lane], "thread {t}");
        }
    }

    #[test]
    fn a_lane_that_does_not_arrive_is_left_out_of_activemask() {
        // Thread 0 spins long enough for the others to stop waiting for it: two groups.
        let got = warp_run(32, 20_000, 0).unwrap();
        assert_eq!(got[0], [1, 0, 0, 0]);
        for (t, row) in got.iter().enumerate().skip(1) {
            assert_eq!(*row, [!1, 1, 0xaaaa_aaaa, t as u32 - 1], "thread {t}");
        }
    }

    #[test]
    fn a_member_mask_naming_lanes_that_never_come_is_an_error() {
        // 8 threads, but the mask names all 32 lanes.
        let e = warp_run(8, 0, u32::MAX as u64).unwrap_err();
        assert!(e.to_string().contains("never reach"), "{e}");
        // A mask without the lane that runs the instruction.
        let e = warp_run(8, 0, 0xfe).unwrap_err();
        assert!(e.to_string().contains("leaves it out"), "{e}");
    }

    /// Eight lanes end at `shfl.sync` with mask 0xff reading lane 7. Mode 0: lane 0 first runs
    /// a `shfl.sync` of its own (mask 1). Mode 1: lane 0 first spins, then runs `activemask`,
    /// so the others wait at the shuffle for it. Mode 2: the mask is 0xfe, which leaves lane 0
    /// out.
    const SYNC_PATHS: &str = r#"
.version 7.0
.target sm_75
.address_size 64
.visible .entry sync_paths(.param .u64 out, .param .u32 mode)
{
.reg .b32 %r<8>;
.reg .b64 %rd<4>;
.reg .pred %p<4>;
ld.param.u64 %rd1, [out];
ld.param.u32 %r5, [mode];
mov.u32 %r1, %tid.x;
mov.u32 %r7, 255;
setp.ne.u32 %p1, %r1, 0;
@%p1 bra $last;
setp.eq.u32 %p2, %r5, 0;
@%p2 bra $alone;
setp.eq.u32 %p2, %r5, 2;
@%p2 bra $bad;
mov.u32 %r6, 0;
$spin:
setp.ge.u32 %p3, %r6, 2000;
@%p3 bra $late;
add.u32 %r6, %r6, 1;
bra $spin;
$late:
activemask.b32 %r4;
bra $last;
$alone:
shfl.sync.idx.b32 %r2, %r1, 0, 31, 1;
bra $last;
$bad:
mov.u32 %r7, 254;
$last:
setp.eq.u32 %p2, %r5, 2;
@%p2 mov.u32 %r7, 254;
shfl.sync.idx.b32 %r3, %r1, 7, 31, %r7;
mul.wide.u32 %rd2, %r1, 4;
add.u64 %rd3, %rd1, %rd2;
st.global.u32 [%rd3], %r3;
ret;
}
"#;

    #[test]
    fn sync_instructions_wait_for_lanes_that_are_elsewhere_and_refuse_lanes_outside_their_mask() {
        // 64 blocks: 64 orders of interleaving.
        let run = |mode: u64| {
            let mut m = Machine::new(Module::parse(SYNC_PATHS).unwrap());
            let out = m.memory.alloc(4 * 8 * 64);
            m.launch("sync_paths", &[out, mode], Launch::linear(64, 8, 1)).map(|()| m.memory.read(out, 32).unwrap())
        };
        for mode in [0, 1] {
            let got = run(mode).unwrap_or_else(|e| panic!("mode {mode}: {e}"));
            assert!(got.chunks(4).all(|c| c == [7, 0, 0, 0]), "mode {mode}: every lane reads lane 7: {got:?}");
        }
        let e = run(2).unwrap_err();
        assert!(e.to_string().contains("leaves it out"), "{e}");
    }
}
