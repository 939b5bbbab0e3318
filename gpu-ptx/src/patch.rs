//! Splicing translated probes into an application's PTX: a call at the entry of a kernel
//! (`kprobe/KERNEL`), before each of its returns (`kretprobe/KERNEL`), or after each memory
//! access of every kernel (`kprobe/__memcapture`, bpftime's name), in the kernel's own module,
//! so the app loads one module as before.
//!
//! Each call sits in its own `{ }` scope with its own registers, so the kernel's registers are
//! untouched; the local memory of the calls (a state block, a stack and a context) is declared
//! once per kernel, as large as its largest probe needs, and shared by its sites (the calls run
//! one after another). The probe's context ([`ctx_layout`]) is the kernel's parameters, 8 bytes
//! each, then the thread's ids; a memory access probe's starts with the access
//! ([`ACCESS_SIZE`] bytes: address, bytes, store).
//! Maps are reached through the module global `bpftime_arena` (see [`ARENA_GLOBAL`]), which
//! the host sets after loading the module.

use crate::state::{off, STATE_SIZE, STATUS_EXIT_THREAD};

/// The module global the host fills, [`ARENA_WORDS`] u64s: arena address, arena length,
/// pid_tgid, then the [`crate::state::HostWords`] (clock offsets, uid_gid, comm).
pub const ARENA_GLOBAL: &str = "bpftime_arena";
/// The words of [`ARENA_GLOBAL`], in order: the state fields they go to.
pub const ARENA_WORDS: [u32; 8] = [
    off::ARENA_LO,
    off::ARENA_LEN,
    off::PID_TGID,
    crate::state::HostWords::FIELDS[0],
    crate::state::HostWords::FIELDS[1],
    crate::state::HostWords::FIELDS[2],
    crate::state::HostWords::FIELDS[3],
    crate::state::HostWords::FIELDS[4],
];
/// Loop budget of one probe call.
pub const PROBE_BUDGET: u64 = 1 << 17;
/// Bytes of thread ids after the parameters: tid, ctaid, ntid, nctaid (x, y, z), u32 each.
pub const IDS_SIZE: u32 = 48;
/// The kernel name of a memory access probe: it runs after every load and store of every
/// kernel (bpftime's `kprobe/__memcapture`).
pub const MEMORY_ACCESS_KERNEL: &str = "__memcapture";
/// Bytes at the start of a memory access probe's context: the address (u64), the bytes
/// accessed (u32), 1 for a store (u32).
pub const ACCESS_SIZE: u32 = 16;

/// A translated probe to splice.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Its program's name (for reports and unique names).
    pub name: String,
    /// The kernel it attaches to: mangled, demangled, or the bare function name.
    pub kernel: String,
    /// At the kernel's returns rather than its entry.
    pub exit: bool,
    /// Its module as `translate` made it.
    pub ptx: String,
    /// Bytes of stack it needs ([`stack_bytes`]).
    pub stack: u32,
    /// The context bytes it reads (`[start, end)` spans), None when that is not known: a site
    /// fills only these ([`bpftime_vm::Program::context_reads`]).
    pub ctx_reads: Option<Vec<(u32, u32)>>,
}

impl Probe {
    /// The probe of `prog`, translated to `ptx`, on `kernel` (its returns when `exit`).
    pub fn new(name: &str, kernel: &str, exit: bool, prog: &bpftime_vm::Program, ptx: String) -> Probe {
        let ctx_reads = prog.context_reads().map(<[_]>::to_vec);
        Probe { name: name.to_string(), kernel: kernel.to_string(), exit, ptx, stack: stack_bytes(prog), ctx_reads }
    }
}

/// Bytes of stack a program needs: its deepest call chain, plus the deepest chain of its
/// callbacks (which run on the bottom frames), 512 bytes a frame, at most 8 frames.
pub fn stack_bytes(prog: &bpftime_vm::Program) -> u32 {
    let main = prog.function_depth(0);
    let callbacks = (0..prog.functions().len()).filter(|&i| prog.functions()[i].callback).map(|i| prog.function_depth(i)).max().unwrap_or(0);
    ((main + callbacks).clamp(1, bpftime_vm::exec::MAX_CALL_DEPTH) * bpftime_vm::exec::FRAME_SIZE) as u32
}

/// Where in a kernel a probe was spliced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    /// At its entry.
    Entry,
    /// Before each of its returns.
    Returns,
    /// After each of its loads and stores.
    MemoryAccesses,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Site::Entry => "entry",
            Site::Returns => "returns",
            Site::MemoryAccesses => "memory accesses",
        })
    }
}

/// What patching did.
#[derive(Clone, Debug, Default)]
pub struct Patched {
    /// The patched module.
    pub ptx: String,
    /// (kernel, probe, where) for each splice.
    pub spliced: Vec<(String, String, Site)>,
    /// Probes whose kernel is not in this module.
    pub unmatched: Vec<String>,
}

/// A kernel of a PTX module.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    /// Its (mangled) name.
    pub name: String,
    /// (parameter name, bytes).
    pub params: Vec<(String, u32)>,
    /// Line index of the body's `{`.
    open: usize,
    /// Line index of the body's closing `}`.
    close: usize,
}

/// The context a probe at a kernel with these parameters gets: 8 bytes per parameter, then
/// [`IDS_SIZE`] bytes of ids. Returns its size.
pub fn ctx_layout(nparams: usize) -> u32 {
    nparams as u32 * 8 + IDS_SIZE
}

/// The name after `.entry` when PTX line `t` (trimmed) starts a kernel's header: `.entry`,
/// `.visible .entry` or `.weak .entry` (`.extern .entry` only declares one).
fn entry_name(t: &str) -> Option<&str> {
    let mut rest = t;
    for linkage in [".visible ", ".weak "] {
        rest = rest.strip_prefix(linkage).unwrap_or(rest);
    }
    let after = rest.strip_prefix(".entry")?;
    let name = after.trim_start().split(['(', ' ', '\t']).next()?.trim();
    (after.starts_with(char::is_whitespace) && !name.is_empty()).then_some(name)
}

/// Bytes of a parameter declaration (`.param .u8 x`, `.param .align 4 .b8 x[12]`,
/// `.param .u64 .ptr .global .align 1 x`).
fn param_bytes(decl: &str) -> u32 {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let ty = words
        .iter()
        .find_map(|w| w.strip_prefix('.').filter(|t| matches!(t.as_bytes().first(), Some(b'u' | b's' | b'b' | b'f')) && t[1..].parse::<u32>().is_ok()));
    let elem = ty.and_then(|t| t[1..].parse::<u32>().ok()).unwrap_or(8) / 8;
    let count = decl.split_once('[').and_then(|(_, c)| c.split(']').next()?.trim().parse::<u32>().ok()).unwrap_or(1);
    elem.max(1) * count
}

/// The kernels a PTX module defines, in order: names, parameters and bodies (declarations,
/// a header ended by `;` as nvcc writes for a kernel launched from the device before its
/// definition, and `.extern .entry` ones, are not kernels of this module).
pub(crate) fn kernels(lines: &[&str]) -> Vec<Kernel> {
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = entry_name(lines[i].trim()) else {
            i += 1;
            continue;
        };
        let name = name.to_string();
        // The header: up to the body's `{`, or to the `;` that makes it a declaration.
        let mut header = String::new();
        let mut j = i;
        let mut declaration = false;
        while j < lines.len() {
            let t = lines[j].trim();
            if t.starts_with('{') {
                break;
            }
            header.push_str(t);
            header.push('\n');
            if t.ends_with(';') {
                declaration = true;
                break;
            }
            j += 1;
        }
        if declaration || j >= lines.len() {
            i = j + 1;
            continue;
        }
        let list = header.split_once('(').map_or("", |(_, l)| l.rsplit_once(')').map_or(l, |(l, _)| l));
        let params = list
            .split(',')
            .map(str::trim)
            .filter(|p| p.starts_with(".param"))
            .map(|p| (p.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("").to_string(), param_bytes(p)))
            .collect();
        let open = j;
        let mut depth = 0;
        let mut k = open;
        while k < lines.len() {
            let t = lines[k].trim();
            depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
            if depth == 0 {
                break;
            }
            k += 1;
        }
        out.push(Kernel { name, params, open, close: k });
        i = k + 1;
    }
    out
}

/// The names a probe may give kernel `kernel` by: mangled, demangled (`void tmpl<3>(int*)`,
/// `ns::plain(int*)`), the qualified name (`tmpl<3>`, `ns::plain`, `(anonymous
/// namespace)::anon`), without template arguments (`tmpl`), and the bare name (`plain`,
/// `anon`). A static kernel of a relocatable build (`__nv_static_..._Z...`) also by its own
/// mangled name's forms.
pub fn kernel_names(kernel: &str) -> Vec<String> {
    let mut names = vec![kernel.to_string()];
    let Some(d) = crate::fatbin::demangle(kernel) else { return names };
    if let Some(inner) = crate::fatbin::static_inner_name(kernel) {
        names.push(inner.to_string());
    }
    let q = qualified_name(&d);
    let plain = without_template_args(&q);
    let last = |s: &str| top_level_split(s, "::").pop().unwrap_or_default();
    for n in [d.clone(), q.clone(), plain.clone(), last(&q), last(&plain)] {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// A demangled function's name without its return type and parameters.
fn qualified_name(demangled: &str) -> String {
    let mut s = demangled.trim();
    // The parameter list: the group the name ends with.
    if s.ends_with(')') {
        let mut depth = 0;
        for (i, c) in s.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' => {
                    depth -= 1;
                    if depth == 0 {
                        s = &s[..i];
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    // A template's return type comes first (`void tmpl<3>`): what follows the last top-level space.
    top_level_split(s, " ").pop().unwrap_or_default()
}

/// `s` split at `sep` outside `<...>` and `(...)`.
fn top_level_split(s: &str, sep: &str) -> Vec<String> {
    let (mut parts, mut depth, mut start) = (vec![], 0i32, 0);
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' | b'(' => depth += 1,
            b'>' | b')' => depth -= 1,
            _ if depth == 0 && s[i..].starts_with(sep) => {
                parts.push(s[start..i].to_string());
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(s[start..].to_string());
    parts
}

/// `s` without its `<...>` groups.
fn without_template_args(s: &str) -> String {
    let mut depth = 0;
    s.chars()
        .filter(|&c| {
            match c {
                '<' => depth += 1,
                '>' => {
                    depth -= 1;
                    return false;
                }
                _ => {}
            }
            depth == 0
        })
        .collect()
}

/// Whether `probe_kernel` names `kernel` (see [`kernel_names`]), also with a `cuda_` prefix
/// (bpftime's spelling for a CUDA kernel that a loader beside the kernel's own kprobes must
/// not take for a kernel function).
fn matches(kernel: &str, probe_kernel: &str) -> bool {
    let names = kernel_names(kernel);
    names.iter().any(|n| n == probe_kernel) || probe_kernel.strip_prefix("cuda_").is_some_and(|rest| names.iter().any(|n| n == rest))
}

/// The probe's functions, renamed apart (`bpf_` -> `bpftime_pN_`), without the module header
/// or the run kernel. Their loads of the host's words from the state become loads of
/// [`ARENA_GLOBAL`], where the host put them: no site copies them for every thread.
fn probe_functions(p: &Probe, n: usize) -> String {
    let body_end = p.ptx.find(".visible .entry ").unwrap_or(p.ptx.len());
    p.ptx[..body_end]
        .lines()
        .filter(|l| !l.starts_with(".version") && !l.starts_with(".target") && !l.starts_with(".address_size") && !l.starts_with("// Generated"))
        .map(|l| {
            let l = l.replace("bpf_", &format!("bpftime_p{n}_"));
            match ARENA_WORDS.iter().position(|f| l.contains(&format!("[%st+{f}]"))) {
                Some(i) if l.contains("ld.u64 ") => {
                    l.replace("ld.u64 ", "ld.global.u64 ").replace(&format!("[%st+{}]", ARENA_WORDS[i]), &format!("[{ARENA_GLOBAL}+{}]", 8 * i))
                }
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fields of the state block a site writes before its call, when the probe reads them.
const STATE_INPUTS: [u32; 8] = [off::STATUS, off::IN_CALLBACK, off::BUDGET, off::STACK_LO, off::STACK_LEN, off::CTX_LO, off::CTX_LEN, off::CTX_WLEN];

/// What a probe's code reads of what its sites prepare: each thread writes only that, in
/// local memory, before each call (the bytes written are most of what an empty probe costs).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Needs {
    /// Offsets of the state fields it reads ([`STATE_INPUTS`] and [`ARENA_WORDS`]).
    state: std::collections::BTreeSet<u32>,
    /// Whether it may end its thread (`bpftime_exit`): the site then reads the status back.
    exits: bool,
    /// The context bytes it reads, None for all.
    ctx: Option<Vec<(u32, u32)>>,
}

/// The definitions among PTX `text` that function `entry` may reach through calls: (name,
/// text) of each `.func` definition (its lines up to the next `.func`), kept when `entry` calls
/// it directly or through others.
fn reachable_functions<'a>(text: &'a str, entry: &str) -> Vec<&'a str> {
    let mut defs: Vec<(&str, &str)> = vec![];
    let mut starts: Vec<usize> = text.match_indices(".func ").map(|(i, _)| i).filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n').collect();
    starts.push(text.len());
    for w in starts.windows(2) {
        let seg = &text[w[0]..w[1]];
        let header = seg.lines().next().unwrap_or_default();
        if header.trim_end().ends_with(';') {
            continue;
        }
        // `.func (.reg .b64 %ret) NAME(...)` or `.func NAME(...)`.
        let rest = header[".func ".len()..].trim_start();
        let rest = if rest.starts_with('(') { rest.split_once(')').map_or("", |r| r.1).trim_start() } else { rest };
        let name = rest.split('(').next().unwrap_or_default().trim();
        defs.push((name, seg));
    }
    let mut seen = vec![false; defs.len()];
    let mut work: Vec<usize> = defs.iter().position(|d| d.0 == entry).into_iter().collect();
    while let Some(i) = work.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        for (j, (name, _)) in defs.iter().enumerate() {
            if !seen[j] && defs[i].1.contains(&format!(" {name}, (")) {
                work.push(j);
            }
        }
    }
    defs.iter().zip(seen).filter(|(_, s)| *s).map(|(d, _)| d.1).collect()
}

impl Needs {
    /// The needs of probe `n` whose functions (as [`probe_functions`] gives them) are `text`:
    /// the state fields read at `[%st+N]` (stores there write outcomes) in the functions its
    /// entry may reach; every field when `%st` is used any other way than as such an address
    /// or a call's argument.
    fn of(p: &Probe, n: usize, text: &str) -> Needs {
        let all = || STATE_INPUTS.iter().chain(&ARENA_WORDS).copied().collect();
        let reached = reachable_functions(text, &format!("bpftime_p{n}_f0")).concat();
        let text = reached.as_str();
        let mut state = std::collections::BTreeSet::new();
        'lines: for line in text.lines() {
            let op = line.trim_start().strip_prefix('@').map_or(line.trim_start(), |g| g.split_once(' ').map_or("", |r| r.1).trim_start());
            if op.starts_with("st.") && op.split_once(' ').is_some_and(|(_, ops)| ops.trim_start().starts_with("[%st+") && ops.matches("%st").count() == 1) {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("%st") {
                let (before, after) = (&rest[..i], &rest[i + 3..]);
                rest = after;
                if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                if before.ends_with('[') {
                    let digits: String = after.strip_prefix('+').unwrap_or("0").chars().take_while(char::is_ascii_digit).collect();
                    match digits.parse::<u32>() {
                        Ok(f) => state.insert(f),
                        Err(_) => {
                            state = all();
                            break 'lines;
                        }
                    };
                } else if !(before.ends_with('(') || before.ends_with(".reg .b64 ")) {
                    state = all();
                    break 'lines;
                }
            }
        }
        state.retain(|f| STATE_INPUTS.contains(f) || ARENA_WORDS.contains(f));
        let exits = text.contains(&format!("st.u32 [%st+{}], {STATUS_EXIT_THREAD};", off::STATUS));
        if exits {
            state.insert(off::STATUS);
        }
        // A helper reading through a pointer the verifier did not prove (its range checked at
        // run time) may be reading the context through a copy of it the verifier lost track
        // of: then the whole context is written.
        let unproven_reads = text.lines().any(|l| (l.contains("_range_ok, (") && l.trim_end().ends_with(", 0);")) || l.contains("_host_ok, ("));
        Needs { state, exits, ctx: p.ctx_reads.clone().filter(|_| !unproven_reads) }
    }

    /// Whether the probe reads the `len` context bytes at `at`.
    fn reads_ctx(&self, at: u32, len: u32) -> bool {
        self.ctx.as_ref().is_none_or(|spans| spans.iter().any(|&(lo, hi)| lo < at + len && at < hi))
    }
}

/// A load or store of the application's kernel, as a memory access probe sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Access {
    /// The address operand (inside the brackets): a register or symbol, maybe `+offset`.
    address: String,
    /// Bytes accessed.
    bytes: u32,
    store: bool,
    /// The instruction's guard (`@%p`, `@!%p`), if any.
    guard: Option<String>,
}

/// The access of PTX line `t` (trimmed) if it is a load, store or atomic operation on memory
/// (any state space but `.param`; `.v2`/`.v4` vectors counted whole).
fn access_of(t: &str) -> Option<Access> {
    let (guard, rest) = match t.strip_prefix('@') {
        Some(r) => {
            let (g, rest) = r.split_once(char::is_whitespace)?;
            (Some(format!("@{g}")), rest.trim_start())
        }
        None => (None, t),
    };
    let (op, operands) = rest.split_once(char::is_whitespace)?;
    let mut parts = op.split('.');
    let store = match parts.next()? {
        "ld" => false,
        // Atomics read and write: reported as stores.
        "st" | "atom" | "red" => true,
        _ => return None,
    };
    let (mut lanes, mut bits) = (1, 0);
    for p in parts {
        match p {
            "param" => return None,
            "v2" => lanes = 2,
            "v4" => lanes = 4,
            "b128" => bits = 128,
            _ => {
                if let Some(n) = p.get(1..).and_then(|n| n.parse::<u32>().ok()).filter(|_| matches!(p.as_bytes()[0], b's' | b'u' | b'b' | b'f')) {
                    bits = n;
                }
            }
        }
    }
    let open = operands.find('[')?;
    let close = operands[open..].find(']')? + open;
    (bits > 0).then(|| Access { address: operands[open + 1..close].trim().to_string(), bytes: lanes * bits / 8, store, guard })
}

/// The negation of guard `g` (`@%p` <-> `@!%p`).
fn negated(g: &str) -> String {
    match g.strip_prefix("@!") {
        Some(p) => format!("@{p}"),
        None => format!("@!{}", &g[1..]),
    }
}

/// The local memory of the probe calls of a kernel: state block, stack and context.
fn locals(names: &str, stack: u32, ctx: u32) -> String {
    format!(
        ".local .align 16 .b8 bpftime_st{names}[{STATE_SIZE}];\n.local .align 16 .b8 bpftime_stk{names}[{stack}];\n.local .align 16 .b8 bpftime_ctx{names}[{ctx}];\n"
    )
}

/// The context size of a probe in kernel `k`.
fn probe_ctx(k: &Kernel, memory: bool) -> u32 {
    ctx_layout(k.params.len()) + if memory { ACCESS_SIZE } else { 0 }
}

/// The call of probe `n` in kernel `k`, with the kernel's local memory named by `names` (see
/// [`locals`]), after `access` for a memory access probe: writes the state fields and context
/// bytes the probe reads (`needs`), calls it, and ends the thread if it called
/// `bpftime_exit`.
fn call_block(k: &Kernel, n: usize, names: &str, stack: u32, needs: &Needs, access: Option<&Access>) -> String {
    let ctx = probe_ctx(k, access.is_some());
    let base = if access.is_some() { ACCESS_SIZE } else { 0 };
    let mut s = String::new();
    let mut l = |x: String| {
        s.push_str(&x);
        s.push('\n');
    };
    l("{".into());
    l(".reg .b64 %bpt<8>;".into());
    l(".reg .b32 %bpw<2>;".into());
    l(".reg .pred %bpexit;".into());
    for (i, sym) in [format!("bpftime_st{names}"), format!("bpftime_stk{names}"), format!("bpftime_ctx{names}")].iter().enumerate() {
        l(format!("mov.u64 %bpt{i}, {sym};"));
        l(format!("cvta.local.u64 %bpt{i}, %bpt{i};"));
    }
    for &field in &needs.state {
        l(match field {
            off::STATUS | off::IN_CALLBACK => format!("st.u32 [%bpt0+{field}], 0;"),
            off::BUDGET => format!("st.u64 [%bpt0+{field}], {PROBE_BUDGET};"),
            off::STACK_LO => format!("st.u64 [%bpt0+{field}], %bpt1;"),
            off::STACK_LEN => format!("st.u64 [%bpt0+{field}], {stack};"),
            off::CTX_LO => format!("st.u64 [%bpt0+{field}], %bpt2;"),
            off::CTX_LEN => format!("st.u64 [%bpt0+{field}], {ctx};"),
            off::CTX_WLEN => format!("st.u64 [%bpt0+{field}], 0;"),
            _ => {
                let i = ARENA_WORDS.iter().position(|&f| f == field).expect("an input field");
                format!("ld.global.u64 %bpt3, [{ARENA_GLOBAL}+{}];\nst.u64 [%bpt0+{field}], %bpt3;", 8 * i)
            }
        });
    }
    for (i, (pname, size)) in k.params.iter().enumerate() {
        let at = base + 8 * i as u32;
        if !needs.reads_ctx(at, 8) {
            continue;
        }
        // Each parameter zero-extended to 8 bytes; a bigger one (a struct by value) gives its
        // first 8 bytes.
        match size {
            8 => l(format!("ld.param.u64 %bpt4, [{pname}];")),
            4 | 2 | 1 => {
                l(format!("ld.param.u{} %bpw0, [{pname}];", 8 * size));
                l("cvt.u64.u32 %bpt4, %bpw0;".into());
            }
            _ => {
                l("mov.u64 %bpt4, 0;".into());
                for b in (0..(*size).min(8)).rev() {
                    l(format!("ld.param.u8 %bpw0, [{pname}+{b}];"));
                    l("cvt.u64.u32 %bpt3, %bpw0;".into());
                    l("shl.b64 %bpt4, %bpt4, 8;".into());
                    l("or.b64 %bpt4, %bpt4, %bpt3;".into());
                }
            }
        }
        l(format!("st.u64 [%bpt2+{at}], %bpt4;"));
    }
    let ids = ["%tid.x", "%tid.y", "%tid.z", "%ctaid.x", "%ctaid.y", "%ctaid.z", "%ntid.x", "%ntid.y", "%ntid.z", "%nctaid.x", "%nctaid.y", "%nctaid.z"];
    for (i, id) in ids.iter().enumerate() {
        let at = base + 8 * k.params.len() as u32 + 4 * i as u32;
        if needs.reads_ctx(at, 4) {
            l(format!("mov.u32 %bpw0, {id};"));
            l(format!("st.u32 [%bpt2+{at}], %bpw0;"));
        }
    }
    if let Some(a) = access {
        // The address: a register or a symbol, plus an offset.
        let (at, offset) = match a.address.split_once('+') {
            Some((at, off)) => (at.trim(), off.trim().parse::<i64>().unwrap_or(0)),
            None => (a.address.as_str(), 0),
        };
        // 32-bit registers (`%r`) address the shared and local windows.
        let narrow = at.starts_with("%r") && !at.starts_with("%rd");
        if needs.reads_ctx(0, 8) {
            l(if narrow { format!("cvt.u64.u32 %bpt4, {at};") } else { format!("mov.u64 %bpt4, {at};") });
            l(format!("add.s64 %bpt4, %bpt4, {offset};"));
            l("st.u64 [%bpt2], %bpt4;".into());
        }
        if needs.reads_ctx(8, 4) {
            l(format!("mov.u32 %bpw0, {};", a.bytes));
            l("st.u32 [%bpt2+8], %bpw0;".into());
        }
        if needs.reads_ctx(12, 4) {
            l(format!("mov.u32 %bpw0, {};", a.store as u32));
            l("st.u32 [%bpt2+12], %bpw0;".into());
        }
    }
    l(format!("add.u64 %bpt5, %bpt1, {stack};"));
    l(format!("call.uni (%bpt6), bpftime_p{n}_f0, (%bpt0, %bpt5, %bpt2, {ctx}, 0, 0, 0);"));
    if needs.exits {
        // bpftime_exit (507): this GPU thread ends here, as under bpftime.
        l(format!("ld.u32 %bpw0, [%bpt0+{}];", off::STATUS));
        l(format!("setp.eq.u32 %bpexit, %bpw0, {STATUS_EXIT_THREAD};"));
        l("@%bpexit exit;".into());
    }
    l("}".into());
    s
}

/// `ptx` with each one-line block (`{ .reg .pred q; setp.gt.s32 q, %r1, 3; @q ret; }`, as
/// inline assembly leaves it) on lines of its own, so its returns are seen as any other.
fn unfold_blocks(ptx: &str) -> std::borrow::Cow<'_, str> {
    let one_line = |t: &str| t.len() > 2 && t.starts_with('{') && t.ends_with('}') && t.contains(';');
    if !ptx.lines().any(|l| one_line(l.trim())) {
        return std::borrow::Cow::Borrowed(ptx);
    }
    let mut out = String::with_capacity(ptx.len() + 64);
    for l in ptx.lines() {
        let t = l.trim();
        if one_line(t) {
            out.push_str("{\n");
            for stmt in t[1..t.len() - 1].split_inclusive(';') {
                if !stmt.trim().is_empty() {
                    out.push_str(stmt.trim());
                    out.push('\n');
                }
            }
            out.push_str("}\n");
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Splices `probes` into the application's PTX module `app`.
pub fn patch(app: &str, probes: &[Probe]) -> Result<Patched, String> {
    patch_with(app, probes, ".visible")
}

/// [`patch`] for one unit of relocatable device code (`nvcc -rdc=true`), to be linked with the
/// other units: its `bpftime_arena` is `.weak`, so the units patched for one link share one.
pub fn patch_unit(unit: &str, probes: &[Probe]) -> Result<Patched, String> {
    patch_with(unit, probes, ".weak")
}

fn patch_with(app: &str, probes: &[Probe], arena_linkage: &str) -> Result<Patched, String> {
    let unfolded = unfold_blocks(app);
    let lines: Vec<&str> = unfolded.lines().collect();
    let ks = kernels(&lines);
    let mut out = Patched::default();
    // Which probes go where: (kernel index, probe index).
    let mut sites: Vec<(usize, usize)> = vec![];
    for (pi, p) in probes.iter().enumerate() {
        let memory = p.kernel == MEMORY_ACCESS_KERNEL;
        let hits: Vec<usize> = ks.iter().enumerate().filter(|(_, k)| memory || matches(&k.name, &p.kernel)).map(|(i, _)| i).collect();
        if hits.is_empty() {
            out.unmatched.push(p.name.clone());
        }
        let site = match (memory, p.exit) {
            (true, _) => Site::MemoryAccesses,
            (false, true) => Site::Returns,
            (false, false) => Site::Entry,
        };
        for ki in hits {
            sites.push((ki, pi));
            out.spliced.push((ks[ki].name.clone(), p.name.clone(), site));
        }
    }
    if sites.is_empty() {
        out.ptx = app.to_string();
        return Ok(out);
    }
    let used: std::collections::BTreeSet<usize> = sites.iter().map(|s| s.1).collect();
    let functions: Vec<String> = probes.iter().enumerate().map(|(pi, p)| if used.contains(&pi) { probe_functions(p, pi) } else { String::new() }).collect();
    let needs: Vec<Needs> = probes.iter().zip(&functions).enumerate().map(|(pi, (p, f))| Needs::of(p, pi, f)).collect();
    let mut text = String::new();
    let header_end = lines.iter().position(|l| l.trim_start().starts_with(".address_size")).ok_or("no .address_size line: not a PTX module")?;
    let is_memory = |pi: usize| probes[pi].kernel == MEMORY_ACCESS_KERNEL;
    for (li, line) in lines.iter().enumerate() {
        // Exit probes before each `ret` of an instrumented kernel.
        let in_kernel = ks.iter().enumerate().find(|(_, k)| li > k.open && li < k.close);
        let t = line.trim();
        if let Some((ki, _)) = in_kernel {
            // Memory access probes after each load and store (under the same guard).
            let memory: Vec<usize> = sites.iter().filter(|s| s.0 == ki && is_memory(s.1)).map(|s| s.1).collect();
            if let Some(a) = access_of(t).filter(|_| !memory.is_empty()) {
                text.push_str(line);
                text.push('\n');
                let skip = format!("$bpftime_skip{li}");
                if let Some(g) = &a.guard {
                    text.push_str(&format!("{} bra {skip};\n", negated(g)));
                }
                for pi in memory {
                    text.push_str(&call_block(&ks[ki], pi, &format!("k{ki}"), probes[pi].stack, &needs[pi], Some(&a)));
                }
                if a.guard.is_some() {
                    text.push_str(&format!("{skip}:\n"));
                }
                continue;
            }
            let exits: Vec<usize> = sites.iter().filter(|s| s.0 == ki && probes[s.1].exit && !is_memory(s.1)).map(|s| s.1).collect();
            // A kernel returns at `ret` and ends its thread at `exit` (inline assembly's).
            let returns = |op: &str| t == op || t.strip_suffix(op).map(str::trim).is_some_and(|g| g.starts_with('@') && !g.contains(' '));
            let guarded_ret = ["ret;", "exit;"].iter().find_map(|op| t.strip_suffix(op).map(str::trim).filter(|g| g.starts_with('@') && !g.contains(' ')));
            if !exits.is_empty() && (returns("ret;") || returns("exit;")) {
                let skip = format!("$bpftime_skip{li}");
                if let Some(g) = guarded_ret {
                    text.push_str(&format!("{} bra {skip};\n", negated(g)));
                }
                for pi in exits {
                    text.push_str(&call_block(&ks[ki], pi, &format!("k{ki}"), probes[pi].stack, &needs[pi], None));
                }
                text.push_str(line);
                text.push('\n');
                if guarded_ret.is_some() {
                    text.push_str(&format!("{skip}:\n"));
                }
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
        if li == header_end {
            text.push_str(&format!("\n// bpftime probes\n{arena_linkage} .global .align 8 .u64 {ARENA_GLOBAL}[{}];\n", ARENA_WORDS.len()));
            for &pi in &used {
                text.push_str(&functions[pi]);
                text.push('\n');
            }
        }
        // The kernel's probe local memory and its entry probes right after the body's `{`.
        if let Some((ki, _)) = ks.iter().enumerate().find(|(_, k)| k.open == li) {
            let mine = || sites.iter().filter(move |s| s.0 == ki).map(|s| s.1);
            if let (Some(stack), Some(ctx)) = (mine().map(|pi| probes[pi].stack).max(), mine().map(|pi| probe_ctx(&ks[ki], is_memory(pi))).max()) {
                text.push_str(&locals(&format!("k{ki}"), stack, ctx));
            }
            for &(_, pi) in sites.iter().filter(|s| s.0 == ki && !probes[s.1].exit && !is_memory(s.1)) {
                text.push_str(&call_block(&ks[ki], pi, &format!("k{ki}"), probes[pi].stack, &needs[pi], None));
            }
        }
    }
    out.ptx = text;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe of `src` (map 1: 8-byte keys and values) as the GPU gets it, and what its sites
    /// write.
    fn needs_of(src: &str) -> (Probe, Needs) {
        use bpftime_vm::analysis::Pointee;
        use bpftime_vm::insn::LddwKind;
        struct OneMap;
        impl bpftime_vm::LddwResolver for OneMap {
            fn resolve(&self, _kind: LddwKind, lo: i32, _hi: i32) -> Result<u64, String> {
                Ok(crate::MAP_TAG | lo as u64)
            }
            fn pointee(&self, kind: LddwKind, _lo: i32, _hi: i32) -> Option<Pointee> {
                (kind == LddwKind::MapFd).then_some(Pointee::Map { value_size: 8, key_size: 8, array: None })
            }
        }
        let helpers = crate::std_helpers::standard();
        let raw = bpftime_vm::asm::assemble(src).unwrap();
        let prog = bpftime_vm::verify(&raw, std::sync::Arc::new(helpers.verifier_table()), &OneMap).unwrap();
        let maps = crate::LddwMaps::from_raw(&raw, |_| Some(0)).unwrap();
        let ptx = crate::translate(&prog, &helpers, &maps, crate::Target::default()).unwrap();
        let probe = Probe::new("p", "k", false, &prog, ptx);
        let needs = Needs::of(&probe, 0, &probe_functions(&probe, 0));
        (probe, needs)
    }

    #[test]
    fn a_context_the_verifier_lost_track_of_is_written_whole() {
        // The key is a stack slot: the lookup is trusted, and the site writes the 4 bytes read.
        let (p, needs) = needs_of("r6 = *(u32 *)(r1 + 0)\n*(u64 *)(r10 - 8) = r6\nr2 = r10\nr2 += -8\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit");
        assert_eq!(p.ctx_reads.as_deref(), Some(&[(0, 4)][..]));
        assert_eq!(needs.ctx.as_deref(), Some(&[(0, 4)][..]));
        assert!(needs.state.is_empty(), "{:?}", needs.state);
        // The key is the stack slot or the context itself, as the branch goes: the verifier
        // lost track (a join), the lookup checks its key at run time, and may read context
        // bytes 4..8: the site writes the whole context.
        let (p, needs) =
            needs_of("r6 = *(u32 *)(r1 + 0)\n*(u64 *)(r10 - 8) = r6\nr2 = r10\nr2 += -8\nif r6 == 0 goto +1\nr2 = r1\nr1 = map_fd(1) ll\ncall 1\nr0 = 0\nexit");
        assert_eq!(p.ctx_reads.as_deref(), Some(&[(0, 4)][..]), "the program's own loads");
        assert_eq!(needs.ctx, None);
    }

    /// Headers as nvcc writes them: a declaration of a kernel launched from the device before
    /// its definition (`-rdc`), a template's `.weak` entry, an `.extern` one, a kernel with
    /// tuning directives and small parameters.
    const MODULE: &str = "\
.version 8.8
.target sm_75
.address_size 64
.extern .entry _Z4elsePi(
\t.param .u64 _Z4elsePi_param_0
)
;
.entry __nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi(
\t.param .u64 __nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi_param_0
)
;
.weak .entry _Z4tmplILi3EEvPi(
\t.param .u64 _Z4tmplILi3EEvPi_param_0
)
{
\tret;
}
.visible .entry _Z5smallcs4Pair(
\t.param .u8 _Z5smallcs4Pair_param_0,
\t.param .u16 _Z5smallcs4Pair_param_1,
\t.param .align 4 .b8 _Z5smallcs4Pair_param_2[12]
)
.maxntid 256, 1, 1
{
\t@%p1 exit;
\tret;
}
.entry __nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi(
\t.param .u64 __nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi_param_0
)
{
\tret;
}
";

    #[test]
    fn kernels_are_definitions_with_their_parameters() {
        let lines: Vec<&str> = MODULE.lines().collect();
        let ks = kernels(&lines);
        let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["_Z4tmplILi3EEvPi", "_Z5smallcs4Pair", "__nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi"]);
        let sizes: Vec<u32> = ks[1].params.iter().map(|p| p.1).collect();
        assert_eq!(sizes, [1, 2, 12]);
        assert_eq!(ks[1].params[2].0, "_Z5smallcs4Pair_param_2");
        assert_eq!((lines[ks[2].open], lines[ks[2].close]), ("{", "}"));
    }

    #[test]
    fn kernels_answer_to_the_names_users_give_them() {
        for (mangled, name) in [
            ("_Z4tmplILi3EEvPi", "tmpl"),
            ("_Z4tmplILi3EEvPi", "tmpl<3>"),
            ("_Z4tmplILi3EEvPi", "void tmpl<3>(int*)"),
            ("_ZN2ns5plainEPi", "plain"),
            ("_ZN2ns5plainEPi", "ns::plain"),
            ("_ZN2ns5plainEPi", "cuda_plain"),
            ("_ZN12_GLOBAL__N_14anonEPi", "anon"),
            ("_ZN12_GLOBAL__N_14anonEPi", "(anonymous namespace)::anon"),
            ("_Z4packIJEEviDpT_", "void pack<>(int)"),
            ("_Z4packIJEEviDpT_", "pack"),
            ("__nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi", "child"),
            ("__nv_static_21__a1b2c3d4_5_x_cu_e5f6__Z5childPi", "_Z5childPi"),
        ] {
            assert!(matches(mangled, name), "{name} names {mangled}: {:?}", kernel_names(mangled));
        }
        assert!(!matches("_Z4tmplILi3EEvPi", "mpl") && !matches("_ZN2ns5plainEPi", "ns") && !matches("_Z5childPi", "child<3>"));
    }

    #[test]
    fn exit_probes_run_before_exits_and_returns() {
        let probe = Probe {
            name: "p".into(),
            kernel: "small".into(),
            exit: true,
            ptx: ".version 8.8\n.target sm_75\n.address_size 64\n".into(),
            stack: 512,
            ctx_reads: None,
        };
        let out = patch(MODULE, &[probe]).unwrap();
        assert_eq!(out.spliced.len(), 1, "{:?} {:?}", out.unmatched, kernel_names("_Z5smallcs4Pair"));
        let body = &out.ptx[out.ptx.find(".visible .entry _Z5smallcs4Pair").unwrap()..];
        assert_eq!(body.matches("call.uni (%bpt6), bpftime_p0_f0").count(), 2, "{body}");
        assert!(body.contains("ld.param.u8 %bpw0, [_Z5smallcs4Pair_param_0];") && body.contains("ld.param.u16 %bpw0, [_Z5smallcs4Pair_param_1];"), "{body}");
        assert!(body.contains("ld.param.u8 %bpw0, [_Z5smallcs4Pair_param_2+7];"), "a struct's first 8 bytes: {body}");
        // A return inside inline assembly's one-line block.
        let asm = MODULE.replace("\t@%p1 exit;", "\t{ .reg .pred q; setp.gt.s32 q, %r1, 3; @q ret; }");
        let out = patch(&asm, &[Probe { name: "p".into(), kernel: "small".into(), exit: true, ptx: String::new(), stack: 512, ctx_reads: None }]).unwrap();
        let body = &out.ptx[out.ptx.find(".visible .entry _Z5smallcs4Pair").unwrap()..];
        assert_eq!(body.matches("call.uni (%bpt6), bpftime_p0_f0").count(), 2, "{body}");
        assert!(body.contains("@!q bra"), "the probe runs only when the block returns: {body}");
    }
}
