//! `bpftime cuda inspect BINARY`: the fatbins a CUDA binary embeds, their entries and kernels,
//! and which kernels can be instrumented (those with PTX).

use bpftime_gpu_ptx::fatbin::{demangle, find_all, is_relocatable_unit, ptx_kernels, EntryKind};
use serde_json::json;
use std::path::Path;

/// The report, as text or JSON.
pub fn inspect(path: &Path, as_json: bool) -> Result<String, String> {
    let bytes = bpftime_runtime::input::read_regular_file(path, 2 << 30).map_err(|e| e.to_string())?;
    let found = find_all(&bytes);
    if found.is_empty() {
        return Err(format!("{}: no CUDA fatbin in it (not built by nvcc, or device code in another file)", path.display()));
    }
    // Kernels whose PTX a unit of relocatable device code holds: the device-linked fatbin's
    // machine code of them is instrumented through that PTX (the agent links the units again).
    let unit_kernels: std::collections::HashSet<String> = found
        .iter()
        .flatten()
        .filter(|f| is_relocatable_unit(f, &bytes[f.offset..f.offset + f.len]))
        .flat_map(|f| f.entries.iter().filter(|e| e.kind == EntryKind::Ptx).filter_map(|e| e.contents(&bytes[f.offset..f.offset + f.len]).ok()))
        .flat_map(|c| ptx_kernels(&String::from_utf8_lossy(&c)).into_iter().map(|k| k.name))
        .collect();
    let mut fatbins = vec![];
    let mut text = String::new();
    for f in found {
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                text.push_str(&format!("{e}\n"));
                fatbins.push(json!({ "error": e.to_string() }));
                continue;
            }
        };
        let data = &bytes[f.offset..f.offset + f.len];
        let unit = is_relocatable_unit(&f, data);
        let what = if unit { ", a unit of relocatable device code" } else { "" };
        text.push_str(&format!("fatbin at {:#x} ({} bytes, {} entries{what})\n", f.offset, f.len, f.entries.len()));
        let mut entries = vec![];
        let mut with_ptx: Vec<(String, Vec<u32>)> = vec![];
        let mut sass_only: Vec<String> = vec![];
        for e in &f.entries {
            let kind = match e.kind {
                EntryKind::Ptx => "ptx".to_string(),
                EntryKind::Elf => "elf".to_string(),
                EntryKind::Other(k) => format!("kind {k}"),
            };
            let contents = e.contents(data);
            let (size, kernels) = match &contents {
                Ok(c) if e.kind == EntryKind::Ptx => (c.len(), ptx_kernels(&String::from_utf8_lossy(c))),
                Ok(c) => (c.len(), vec![]),
                Err(_) => (0, vec![]),
            };
            text.push_str(&format!(
                "  {kind} sm_{} version {}.{} compression {} ({} bytes stored, {size} bytes){}\n",
                e.arch,
                e.version.0,
                e.version.1,
                e.compression.name(),
                e.payload.len(),
                contents.as_ref().err().map(|err| format!(": cannot read: {err}")).unwrap_or_default()
            ));
            for k in &kernels {
                if !with_ptx.iter().any(|(n, _)| n == &k.name) {
                    with_ptx.push((k.name.clone(), k.params.clone()));
                }
            }
            if e.kind == EntryKind::Elf {
                if let Ok(c) = &contents {
                    for name in elf_kernels(c) {
                        sass_only.push(name);
                    }
                }
            }
            entries.push(json!({
                "kind": kind, "arch": e.arch, "version": format!("{}.{}", e.version.0, e.version.1),
                "compression": e.compression.name(), "stored_bytes": e.payload.len(), "bytes": size,
                "kernels": kernels.iter().map(|k| k.name.clone()).collect::<Vec<_>>(),
            }));
        }
        sass_only.retain(|n| !with_ptx.iter().any(|(p, _)| p == n));
        let mut seen = std::collections::HashSet::new();
        sass_only.retain(|n| seen.insert(n.clone()));
        let mut kernels = vec![];
        for (name, params) in &with_ptx {
            let pretty = demangle(name).unwrap_or_else(|| name.clone());
            text.push_str(&format!("  kernel {name} ({pretty}), params {params:?} bytes: can be instrumented (PTX)\n"));
            kernels.push(json!({ "name": name, "demangled": pretty, "param_sizes": params, "instrumentable": true }));
        }
        for name in &sass_only {
            let pretty = demangle(name).unwrap_or_else(|| name.clone());
            let linked = unit_kernels.contains(name);
            let how =
                if linked { "device-linked SASS: instrumented through its unit's PTX (linked again with the probes)" } else { "SASS only, runs untouched" };
            text.push_str(&format!("  kernel {name} ({pretty}): {how}\n"));
            kernels.push(json!({ "name": name, "demangled": pretty, "instrumentable": linked }));
        }
        fatbins.push(json!({ "offset": f.offset, "bytes": f.len, "relocatable_unit": unit, "entries": entries, "kernels": kernels }));
    }
    if as_json {
        Ok(serde_json::to_string_pretty(&json!({ "file": path.display().to_string(), "fatbins": fatbins })).expect("JSON values serialise") + "\n")
    } else {
        Ok(text)
    }
}

/// Kernel names of a cubin: its function symbols marked as entries (`STO_CUDA_ENTRY` in
/// `st_other`; device functions, which a relocatable build keeps as functions of their own,
/// are not kernels).
fn elf_kernels(cubin: &[u8]) -> Vec<String> {
    use object::{Object as _, ObjectSymbol, SymbolFlags, SymbolKind};
    const STO_CUDA_ENTRY: u8 = 0x10;
    let Ok(f) = object::File::parse(cubin) else { return vec![] };
    f.symbols()
        .filter(|s| s.kind() == SymbolKind::Text && matches!(s.flags(), SymbolFlags::Elf { st_other, .. } if st_other.0 & STO_CUDA_ENTRY != 0))
        .filter_map(|s| Some(s.name().ok()?.to_string()))
        .collect()
}

/// What ptxas makes of one kernel: registers, and bytes of local memory (stack frame) a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelResources {
    registers: u32,
    stack: u32,
}

/// ptxas (`$PTXAS`, else on PATH, else where `scripts/setup.sh` installs NVIDIA's wheel).
fn ptxas() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS") {
        return Some(p.into());
    }
    let works = |p: &Path| std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if works(Path::new("ptxas")) {
        return Some("ptxas".into());
    }
    let wheel = std::fs::read_dir("/opt/bpftime-cuda/nvidia").ok()?;
    wheel.flatten().map(|e| e.path().join("bin/ptxas")).find(|p| works(p))
}

/// The entry functions' resources in ptxas's `-v` report for `ptx` compiled for `sm`.
/// A unit of relocatable device code (`unit`) is compiled as one (`-c`): it may use what other
/// units define.
fn kernel_resources(ptxas: &Path, ptx: &str, sm: u32, unit: bool, scratch: &Path) -> Result<std::collections::HashMap<String, KernelResources>, String> {
    let src = scratch.join(format!(".bpftime-resources-{}.ptx", std::process::id()));
    std::fs::write(&src, ptx).map_err(|e| format!("{}: {e}", src.display()))?;
    let o = std::process::Command::new(ptxas).arg(format!("-arch=sm_{sm}")).arg("-v").args(unit.then_some("-c")).arg(&src).args(["-o", "/dev/null"]).output();
    let _ = std::fs::remove_file(&src);
    let o = o.map_err(|e| format!("{}: {e}", ptxas.display()))?;
    let log = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        return Err(log.lines().find(|l| l.contains("error")).unwrap_or("failed").to_string());
    }
    // `Compiling entry function 'NAME' for 'sm_NN'`, then `N bytes stack frame`, then
    // `Used N registers`.
    let mut out = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    let mut stack = 0;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
            stack = 0;
        } else if let Some(n) = line.trim().strip_suffix(" bytes spill loads").and_then(|_| line.trim().split(' ').next()?.parse().ok()) {
            stack = n;
        } else if let (Some(name), Some(n)) = (&current, line.split("Used ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok())) {
            out.insert(name.clone(), KernelResources { registers: n, stack });
            current = None;
        }
    }
    Ok(out)
}

/// What splicing cost each kernel of `kernels` in ptxas's words (registers, local memory per
/// thread), original next to patched; a note instead when ptxas is not at hand.
fn resource_report(original: &str, patched: &str, sm: u32, unit: bool, kernels: &std::collections::BTreeSet<&str>, scratch: &Path) -> String {
    let Some(ptxas) = ptxas() else { return "  (ptxas not found: the registers probes add are not reported)\n".into() };
    let (before, after) = match (kernel_resources(&ptxas, original, sm, unit, scratch), kernel_resources(&ptxas, patched, sm, unit, scratch)) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => return format!("  (ptxas sm_{sm}: {e})\n"),
    };
    let mut s = String::new();
    for k in kernels {
        if let (Some(b), Some(a)) = (before.get(*k), after.get(*k)) {
            s.push_str(&format!(
                "  {k} for sm_{sm}: {} -> {} registers, {} -> {} bytes of stack frame (local memory a thread)\n",
                b.registers, a.registers, b.stack, a.stack
            ));
        }
    }
    s
}

/// `bpftime cuda patch OBJ BINARY -o DIR`: writes the PTX of every PTX entry of BINARY's
/// fatbins with OBJ's `kprobe/KERNEL` and `kretprobe/KERNEL` programs (those named in `only`,
/// or all) spliced in; returns the report. A unit of relocatable device code is written as
/// the agent links it (`*.unit.ptx`: with the others, e.g. `ptxas -c` and `nvlink`).
pub fn patch(obj_path: &Path, binary: &Path, dir: &Path, only: &[String]) -> Result<String, String> {
    use bpftime_gpu_ptx::patch::{patch, patch_unit};
    use bpftime_gpu_ptx::Target;
    use bpftime_object::Object;
    use bpftime_runtime::gpu::GpuProbes;
    let obj =
        Object::parse(&bpftime_runtime::input::read_program_file(obj_path).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", obj_path.display()))?;
    // Loaded as `bpftime run` would (into private memory), so the probes and their shared
    // arena are exactly what the agent splices (sparse: only what the maps touch is memory).
    let region = std::sync::Arc::new(bpftime_shm::ShmRegion::anonymous(2 << 30).map_err(|e| e.to_string())?);
    let rt = bpftime_runtime::Runtime::new(region.clone(), bpftime_runtime::EngineKind::Interp);
    let loaded = rt.load_object(&obj).map_err(|e| format!("{}: {e}", obj_path.display()))?;
    if let Some(missing) = only.iter().find(|p| !loaded.programs.iter().any(|(name, section, _)| *p == name || *p == section)) {
        return Err(format!("{}: no program `{missing}`", obj_path.display()));
    }
    let chosen: Vec<(String, String, u32)> =
        loaded.programs.into_iter().filter(|(name, section, _)| only.is_empty() || only.iter().any(|p| p == name || p == section)).collect();
    let stored = bpftime_runtime::links::store_uprobes(&region, &chosen).map_err(|e| e.to_string())?;
    let (probes, failed) = GpuProbes::prepare(&region, &stored.links);
    if let Some((_, name, why)) = failed.first() {
        return Err(format!("{}: `{name}`: {why}", obj_path.display()));
    }
    if probes.probes.is_empty() {
        return Err(format!("{}: no kprobe/KERNEL or kretprobe/KERNEL programs", obj_path.display()));
    }
    let bytes = bpftime_runtime::input::read_regular_file(binary, 2 << 30).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = String::new();
    let mut wrote = 0;
    for (fi, f) in find_all(&bytes).into_iter().enumerate() {
        let f = f.map_err(|e| e.to_string())?;
        let data = &bytes[f.offset..f.offset + f.len];
        let unit = is_relocatable_unit(&f, data);
        for (ei, e) in f.entries.iter().enumerate().filter(|(_, e)| e.kind == EntryKind::Ptx) {
            let ptx = String::from_utf8_lossy(&e.contents(data).map_err(|err| format!("fatbin {fi} entry {ei}: {err}"))?).to_string();
            let target = Target { shard_atomic_adds: true, ..Target::sm(e.arch.clamp(75, 120)) };
            let probes = probes.translate(target).map_err(|err| format!("{}: {err}", obj_path.display()))?;
            let patched = if unit { patch_unit(&ptx, &probes)? } else { patch(&ptx, &probes)? };
            let out = dir.join(format!("fatbin{fi}-entry{ei}-sm_{}{}.ptx", e.arch, if unit { ".unit" } else { "" }));
            std::fs::write(&out, &patched.ptx).map_err(|err| format!("{}: {err}", out.display()))?;
            wrote += 1;
            report.push_str(&format!("{}:\n", out.display()));
            for (kernel, probe, site) in &patched.spliced {
                report.push_str(&format!("  probe `{probe}` at the {site} of {kernel} ({})\n", demangle(kernel).unwrap_or_default()));
            }
            for p in &patched.unmatched {
                report.push_str(&format!("  `{p}`: no such kernel in this module\n"));
            }
            let kernels: std::collections::BTreeSet<&str> = patched.spliced.iter().map(|s| s.0.as_str()).collect();
            if !kernels.is_empty() {
                report.push_str(&resource_report(&ptx, &patched.ptx, e.arch.clamp(75, 120), unit, &kernels, dir));
            }
        }
    }
    if wrote == 0 {
        return Err(format!("{}: no PTX in its fatbins: its kernels run untouched (rebuild with PTX, e.g. the default nvcc flags)", binary.display()));
    }
    Ok(report)
}
