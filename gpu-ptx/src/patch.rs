//! Splicing translated probes into an application's PTX: a call at the entry of a kernel
//! (`kprobe/KERNEL`) or before each of its returns (`kretprobe/KERNEL`), in the kernel's own
//! module, so the app loads one module as before.
//!
//! Each call sits in its own `{ }` scope with its own registers and local memory (the probe's
//! state block, its stack and its context), so the kernel's registers are untouched. The
//! probe's context ([`ctx_layout`]) is the kernel's parameters, 8 bytes each, then the
//! thread's ids. Maps are reached through the module global `bpftime_arena` (arena address,
//! length, pid_tgid), which the host sets after loading the module.

use crate::state::{off, STATE_SIZE};

/// The module global the host fills: `[arena address, arena length, pid_tgid]`.
pub const ARENA_GLOBAL: &str = "bpftime_arena";
/// Loop budget of one probe call.
pub const PROBE_BUDGET: u64 = 1 << 17;
/// Bytes of thread ids after the parameters: tid, ctaid, ntid, nctaid (x, y, z), u32 each.
pub const IDS_SIZE: u32 = 48;

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
}

/// Bytes of stack a program needs: its deepest call chain, plus the deepest chain of its
/// callbacks (which run on the bottom frames), 512 bytes a frame, at most 8 frames.
pub fn stack_bytes(prog: &bpftime_vm::Program) -> u32 {
    let main = prog.function_depth(0);
    let callbacks = (0..prog.functions().len()).filter(|&i| prog.functions()[i].callback).map(|i| prog.function_depth(i)).max().unwrap_or(0);
    ((main + callbacks).clamp(1, bpftime_vm::exec::MAX_CALL_DEPTH) * bpftime_vm::exec::FRAME_SIZE) as u32
}

/// What patching did.
#[derive(Clone, Debug, Default)]
pub struct Patched {
    /// The patched module.
    pub ptx: String,
    /// (kernel, probe, at exit) for each splice.
    pub spliced: Vec<(String, String, bool)>,
    /// Probes whose kernel is not in this module.
    pub unmatched: Vec<String>,
}

/// A kernel of the application's module.
#[derive(Clone, Debug)]
struct Kernel {
    name: String,
    /// (parameter name, bytes it has, bytes loaded into the context: 8, 4 or 0).
    params: Vec<(String, u32)>,
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

fn kernels(lines: &[&str]) -> Vec<Kernel> {
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        let Some(rest) = t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".entry ")) else {
            i += 1;
            continue;
        };
        let name = rest.split(['(', ' ']).next().unwrap_or("").trim().to_string();
        // Parameters until the line that closes the list, then the body's `{`.
        let mut params = vec![];
        let mut j = i;
        let mut header = String::new();
        while j < lines.len() && lines[j].trim() != "{" {
            header.push_str(lines[j]);
            header.push('\n');
            j += 1;
        }
        for p in header.split(['(', ',', ')', '\n']).map(str::trim).filter(|p| p.starts_with(".param")) {
            let pname = p.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("").to_string();
            let size = if p.contains(".u64") || p.contains(".s64") || p.contains(".b64") || p.contains(".f64") {
                8
            } else if p.contains(".u32") || p.contains(".s32") || p.contains(".b32") || p.contains(".f32") {
                4
            } else {
                0
            };
            params.push((pname, size));
        }
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

/// Whether `probe_kernel` names `kernel` (mangled, demangled, or the bare name), also with a
/// `cuda_` prefix (bpftime's spelling for a CUDA kernel that a loader beside the kernel's own
/// kprobes must not take for a kernel function).
fn matches(kernel: &str, probe_kernel: &str) -> bool {
    if kernel == probe_kernel || probe_kernel.strip_prefix("cuda_").is_some_and(|rest| matches(kernel, rest)) {
        return true;
    }
    let Some(d) = crate::fatbin::demangle(kernel) else { return false };
    d == probe_kernel || d.split('(').next().is_some_and(|bare| bare == probe_kernel || bare.rsplit("::").next() == Some(probe_kernel))
}

/// The probe's functions, renamed apart (`bpf_` -> `bpftime_pN_`), without the module header
/// or the run kernel.
fn probe_functions(p: &Probe, n: usize) -> String {
    let body_end = p.ptx.find(".visible .entry ").unwrap_or(p.ptx.len());
    p.ptx[..body_end]
        .lines()
        .filter(|l| !l.starts_with(".version") && !l.starts_with(".target") && !l.starts_with(".address_size") && !l.starts_with("// Generated"))
        .map(|l| l.replace("bpf_", &format!("bpftime_p{n}_")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The call of probe `n` (site `site`) in kernel `k`.
fn call_block(k: &Kernel, n: usize, site: usize, stack: u32) -> String {
    let ctx = ctx_layout(k.params.len());
    let mut s = String::new();
    let mut l = |x: String| {
        s.push_str(&x);
        s.push('\n');
    };
    l("{".into());
    l(format!(".local .align 16 .b8 bpftime_st{site}[{STATE_SIZE}];"));
    l(format!(".local .align 16 .b8 bpftime_stk{site}[{stack}];"));
    l(format!(".local .align 16 .b8 bpftime_ctx{site}[{ctx}];"));
    l(".reg .b64 %bpt<8>;".into());
    l(".reg .b32 %bpw<2>;".into());
    for (i, sym) in [format!("bpftime_st{site}"), format!("bpftime_stk{site}"), format!("bpftime_ctx{site}")].iter().enumerate() {
        l(format!("mov.u64 %bpt{i}, {sym};"));
        l(format!("cvta.local.u64 %bpt{i}, %bpt{i};"));
    }
    l(format!("st.u32 [%bpt0+{}], 0;", off::STATUS));
    l(format!("st.u32 [%bpt0+{}], 0;", off::IN_CALLBACK));
    l(format!("st.u64 [%bpt0+{}], {PROBE_BUDGET};", off::BUDGET));
    l(format!("st.u64 [%bpt0+{}], %bpt1;", off::STACK_LO));
    l(format!("st.u64 [%bpt0+{}], {stack};", off::STACK_LEN));
    l(format!("st.u64 [%bpt0+{}], %bpt2;", off::CTX_LO));
    l(format!("st.u64 [%bpt0+{}], {ctx};", off::CTX_LEN));
    l(format!("st.u64 [%bpt0+{}], 0;", off::CTX_WLEN));
    for (i, field) in [off::ARENA_LO, off::ARENA_LEN, off::PID_TGID].iter().enumerate() {
        l(format!("ld.global.u64 %bpt3, [{ARENA_GLOBAL}+{}];", 8 * i));
        l(format!("st.u64 [%bpt0+{field}], %bpt3;"));
    }
    for (i, (pname, size)) in k.params.iter().enumerate() {
        match size {
            8 => l(format!("ld.param.u64 %bpt4, [{pname}];")),
            4 => {
                l(format!("ld.param.u32 %bpw0, [{pname}];"));
                l("cvt.u64.u32 %bpt4, %bpw0;".into());
            }
            _ => l("mov.u64 %bpt4, 0;".into()),
        }
        l(format!("st.u64 [%bpt2+{}], %bpt4;", 8 * i));
    }
    let ids = ["%tid.x", "%tid.y", "%tid.z", "%ctaid.x", "%ctaid.y", "%ctaid.z", "%ntid.x", "%ntid.y", "%ntid.z", "%nctaid.x", "%nctaid.y", "%nctaid.z"];
    for (i, id) in ids.iter().enumerate() {
        l(format!("mov.u32 %bpw0, {id};"));
        l(format!("st.u32 [%bpt2+{}], %bpw0;", 8 * k.params.len() + 4 * i));
    }
    l(format!("add.u64 %bpt5, %bpt1, {stack};"));
    l(format!("call.uni (%bpt6), bpftime_p{n}_f0, (%bpt0, %bpt5, %bpt2, {ctx}, 0, 0, 0);"));
    l("}".into());
    s
}

/// Splices `probes` into the application's PTX module `app`.
pub fn patch(app: &str, probes: &[Probe]) -> Result<Patched, String> {
    let lines: Vec<&str> = app.lines().collect();
    let ks = kernels(&lines);
    let mut out = Patched::default();
    // Which probes go where: (kernel index, probe index).
    let mut sites: Vec<(usize, usize)> = vec![];
    for (pi, p) in probes.iter().enumerate() {
        let hits: Vec<usize> = ks.iter().enumerate().filter(|(_, k)| matches(&k.name, &p.kernel)).map(|(i, _)| i).collect();
        if hits.is_empty() {
            out.unmatched.push(p.name.clone());
        }
        for ki in hits {
            sites.push((ki, pi));
            out.spliced.push((ks[ki].name.clone(), p.name.clone(), p.exit));
        }
    }
    if sites.is_empty() {
        out.ptx = app.to_string();
        return Ok(out);
    }
    let used: std::collections::BTreeSet<usize> = sites.iter().map(|s| s.1).collect();
    let mut text = String::new();
    let mut site = 0;
    let header_end = lines.iter().position(|l| l.trim_start().starts_with(".address_size")).ok_or("no .address_size line: not a PTX module")?;
    for (li, line) in lines.iter().enumerate() {
        // Exit probes before each `ret` of an instrumented kernel.
        let in_kernel = ks.iter().enumerate().find(|(_, k)| li > k.open && li < k.close);
        let t = line.trim();
        if let Some((ki, _)) = in_kernel {
            let exits: Vec<usize> = sites.iter().filter(|s| s.0 == ki && probes[s.1].exit).map(|s| s.1).collect();
            let guarded_ret = t.strip_suffix("ret;").map(str::trim).filter(|g| g.starts_with('@'));
            if !exits.is_empty() && (t == "ret;" || guarded_ret.is_some()) {
                let skip = format!("$bpftime_skip{li}");
                if let Some(g) = guarded_ret {
                    let neg = if let Some(p) = g.strip_prefix("@!") { format!("@{p}") } else { format!("@!{}", &g[1..]) };
                    text.push_str(&format!("{neg} bra {skip};\n"));
                }
                for pi in exits {
                    text.push_str(&call_block(&ks[ki], pi, site, probes[pi].stack));
                    site += 1;
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
            text.push_str(&format!("\n// bpftime probes\n.visible .global .align 8 .u64 {ARENA_GLOBAL}[3];\n"));
            for &pi in &used {
                text.push_str(&probe_functions(&probes[pi], pi));
                text.push('\n');
            }
        }
        // Entry probes right after the body's `{`.
        if let Some((ki, _)) = ks.iter().enumerate().find(|(_, k)| k.open == li) {
            for &(_, pi) in sites.iter().filter(|s| s.0 == ki && !probes[s.1].exit) {
                text.push_str(&call_block(&ks[ki], pi, site, probes[pi].stack));
                site += 1;
            }
        }
    }
    out.ptx = text;
    Ok(out)
}
