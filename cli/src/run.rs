//! `bpftime run OBJ -- CMD`: loads the object into a region of its own, runs CMD with the
//! agent preloaded, prints ring buffer and perf buffer records as they arrive, and at the end
//! the maps and what never got attached; removes the region whatever happens and exits with
//! the command's status.
//!
//! Everything `bpftime` itself prints goes to stderr (or to `--output FILE`), so the command's
//! own stdout stays as it is.

use crate::dump;
use crate::supervise;
use bpftime_maps::{Map, MapType};
use bpftime_object::btf::Btf;
use bpftime_runtime::links::{self, LinkState};
use bpftime_runtime::trace::TracePipe;
use bpftime_runtime::{EngineKind, Runtime};
use bpftime_shm::ShmRegion;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `bpftime run` was asked.
pub struct RunRequest {
    /// The object.
    pub file: PathBuf,
    /// JSON lines instead of text.
    pub json: bool,
    /// Where our output goes (default stderr).
    pub output: Option<PathBuf>,
    /// Engine in the traced process.
    pub engine: EngineKind,
    /// Run-time memory checks kept in the traced process.
    pub checks: bpftime_vm::Checks,
    /// Loop budget of one probe hit, if not the default.
    pub budget: Option<u64>,
    /// Region size.
    pub shm_size: u64,
    /// Programs to attach (function or section names); empty: all.
    pub programs: Vec<String>,
    /// `PROG=BINARY:FUNCTION[+OFFSET]`: where programs whose section names no target attach.
    pub attach: Vec<String>,
    /// `NAME=VALUE`: globals set before loading.
    pub set: Vec<String>,
    /// `NAME=N`: map sizes set before loading.
    pub map_size: Vec<String>,
    /// Run an ahead-of-time object's machine code (`--aot`).
    pub aot: bool,
    /// The agent library.
    pub agent: PathBuf,
    /// The command.
    pub command: Vec<String>,
}

/// Where our output goes; write errors (a reader that went away) end the output quietly.
struct Sink {
    out: Box<dyn Write>,
    broken: bool,
}

impl Sink {
    fn line(&mut self, s: &str) {
        if !self.broken && writeln!(self.out, "{s}").and_then(|()| self.out.flush()).is_err() {
            self.broken = true;
        }
    }
}

/// Prints ring buffer and perf buffer records, decoded with the object's BTF when it
/// describes them.
struct Events {
    maps: Vec<Map>,
    btf: Option<Btf>,
    json: bool,
    /// The BTF type of records of each size, looked up once (a lookup scans every type).
    record_types: std::cell::RefCell<std::collections::HashMap<usize, Option<u32>>>,
}

impl Events {
    fn drain(&self, sink: &mut Sink) -> usize {
        let mut n = 0;
        for m in &self.maps {
            let mut show = |cpu: Option<u32>, data: &[u8]| {
                n += 1;
                sink.line(&self.format(m, cpu, data));
            };
            match m.map_type() {
                MapType::Ringbuf => {
                    m.ringbuf_consume(&mut |d| show(None, d));
                }
                MapType::PerfEventArray => {
                    m.perf_consume(&mut |r| show(Some(r.cpu), r.data));
                }
                _ => {}
            }
        }
        n
    }

    fn format(&self, m: &Map, cpu: Option<u32>, data: &[u8]) -> String {
        // A perf sample's raw size counts the padding to 8-byte words (as the kernel's does):
        // its type may be up to 7 bytes shorter.
        let lengths = if cpu.is_some() { data.len().saturating_sub(7)..=data.len() } else { data.len()..=data.len() };
        let decoded = self.btf.as_ref().and_then(|b| {
            lengths.rev().find_map(|len| {
                let id = *self.record_types.borrow_mut().entry(len).or_insert_with(|| b.record_type(len));
                id.map(|id| b.format_value(id, &data[..len]))
            })
        });
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        if self.json {
            let mut o = json!({ "event": { "map": m.name(), "size": data.len(), "hex": hex } });
            if let Some(cpu) = cpu {
                o["event"]["cpu"] = json!(cpu);
            }
            if let Some(d) = decoded {
                o["event"]["decoded"] = json!(d);
            }
            return o.to_string();
        }
        let from = match cpu {
            Some(c) => format!("{} `{}` cpu {c}", m.map_type().name(), m.name()),
            None => format!("{} `{}`", m.map_type().name(), m.name()),
        };
        match decoded {
            Some(d) => format!("{from}: {d}\n  {} bytes: {hex}", data.len()),
            None => format!("{from}: {} bytes: {hex}", data.len()),
        }
    }
}

/// Why a link never attached, from its state.
fn never_attached_reason(link: &links::UprobeLink, command: &str) -> Option<String> {
    match link.state {
        LinkState::Attached | LinkState::Failed => None,
        LinkState::Waiting if link.kind == links::LinkKind::CudaKernel => {
            Some(format!("`{command}` loaded no CUDA module with PTX for a kernel named `{}` (kernel kprobes run in the kernel, not here)", link.target))
        }
        LinkState::Waiting => Some(format!("its binary was never loaded by `{command}`")),
        LinkState::Stored => {
            Some(format!("the agent never started in `{command}` (a statically linked program, or one that drops LD_PRELOAD, cannot be traced this way)"))
        }
    }
}

/// Removes `bpftime-run-PID` regions of ours whose `bpftime run` is gone (killed with SIGKILL,
/// the one case it cannot clean up after itself).
fn remove_stale_regions() {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // A run's region, and the code cache beside it.
        let (stem, cache) = match name.strip_suffix(".code") {
            Some(stem) => (stem, true),
            None => (name.as_str(), false),
        };
        let Some(pid) = stem.strip_prefix("bpftime-run-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        let mine = e.metadata().is_ok_and(|m| m.uid() == me && if cache { m.is_dir() } else { m.file_type().is_file() });
        if mine && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = if cache { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
    }
}

/// Where `command` is found, as a shell would find it (through `PATH` when it has no slash).
fn command_path(command: &str) -> Option<std::path::PathBuf> {
    if command.contains('/') {
        return std::fs::canonicalize(command).ok();
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(command)).find(|p| p.is_file()).and_then(|p| std::fs::canonicalize(p).ok())
}

/// Runs the request; returns the command's exit status (128 + signal if a signal ended it).
pub fn run(req: RunRequest) -> Result<i32, String> {
    let shown = req.file.display().to_string();
    let read = bpftime_runtime::input::read_object_file(&req.file, req.aot)?;
    if let Some(note) = &read.note {
        eprintln!("bpftime: {note}");
    }
    let (mut obj, aot) = (read.object, read.aot);
    for spec in &req.map_size {
        let (name, n) = spec.split_once('=').ok_or_else(|| format!("--map-size {spec}: write NAME=N"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("--map-size {spec}: `{n}` is not a number"))?;
        obj.set_map_size(name.trim(), n).map_err(|e| format!("--map-size {spec}: {e}"))?;
    }
    for spec in &req.set {
        let (name, value) = spec.split_once('=').ok_or_else(|| format!("--set {spec}: write NAME=VALUE"))?;
        obj.set_global(name.trim(), value).map_err(|e| format!("--set {spec}: {e}"))?;
    }
    let mut attach = vec![];
    for spec in &req.attach {
        let (prog, target) = spec.split_once('=').ok_or_else(|| format!("--attach {spec}: write PROG=BINARY:FUNCTION"))?;
        if !target.contains(':') {
            return Err(format!("--attach {spec}: the target is BINARY:FUNCTION[+OFFSET]"));
        }
        attach.push((prog.trim().to_string(), target.trim().to_string()));
    }
    let out: Box<dyn Write> = match &req.output {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(std::io::stderr()),
    };
    let mut sink = Sink { out, broken: false };

    remove_stale_regions();
    let name = format!("bpftime-run-{}", std::process::id());
    let guard = supervise::start(&bpftime_shm::path_of(&name))?;
    let region = Arc::new(ShmRegion::create(&name, req.shm_size).map_err(|e| e.to_string())?);
    let mut rt = Runtime::new(region.clone(), req.engine);
    if let Err(e) = rt.use_code_cache_from_env() {
        eprintln!("bpftime: {e}");
    }
    let loaded = rt.load_object_with(&obj, aot.as_ref()).map_err(|e| format!("{shown}: {e}"))?;
    for (name, section, why) in &loaded.refused {
        eprintln!("bpftime: {shown}: `{name}` (section `{section}`) is not loaded: {why}");
    }
    for (name, why) in &loaded.aot_unused {
        eprintln!("bpftime: {shown}: `{name}`: ahead-of-time code not used ({why})");
    }
    let chosen: Vec<(String, String, u32)> = loaded
        .programs
        .iter()
        .filter(|(name, section, _)| req.programs.is_empty() || req.programs.iter().any(|p| p == name || p == section))
        .cloned()
        .collect();
    if let Some(missing) = req.programs.iter().find(|p| !loaded.programs.iter().any(|(name, section, _)| *p == name || *p == section)) {
        return Err(format!("{shown}: no program named `{missing}`"));
    }
    // Programs attached where --attach says are not the section's to place.
    let (placed, by_section): (Vec<_>, Vec<_>) = chosen.into_iter().partition(|(name, section, _)| attach.iter().any(|(p, _)| p == name || p == section));
    // `/proc/self/exe` in a section is the command's executable.
    let exe = command_path(&req.command[0]);
    let mut stored = links::store_uprobes_for(&region, &by_section, exe.as_deref(), 0).map_err(|e| e.to_string())?;
    for (prog, target) in &attach {
        let Some((name, section, id)) = placed.iter().find(|(name, section, _)| prog == name || prog == section) else {
            return Err(format!("{shown}: --attach {prog}=...: no program named `{prog}`"));
        };
        if section.starts_with("usdt") {
            // A USDT program placed by --attach PROG=BINARY:PROVIDER:NAME: one link per site.
            let placed = links::store_uprobes_for(&region, &[(name.clone(), format!("usdt/{target}"), *id)], exe.as_deref(), 0).map_err(|e| e.to_string())?;
            stored.links.extend(placed.links);
            stored.skipped.extend(placed.skipped);
            continue;
        }
        let retprobe = section.starts_with("uretprobe") || section.starts_with("kretprobe");
        let replace = section.starts_with("ureplace");
        let scope = links::LinkScope { replace, ..Default::default() };
        let link = links::store_owned(&region, name, *id, target, retprobe, 0, scope).map_err(|e| e.to_string())?;
        stored.links.push(links::UprobeLink {
            id: link,
            name: name.clone(),
            prog: *id,
            target: target.clone(),
            retprobe,
            replace,
            cookie: 0,
            state: links::LinkState::Stored,
            kind: links::LinkKind::Uprobe,
            pid: 0,
            ref_ctr: 0,
            owner: 0,
            fd: None,
        });
    }
    for s in &stored.skipped {
        eprintln!("bpftime: {shown}: {s}");
    }
    if stored.links.is_empty() {
        return Err(format!("{shown}: no uprobe, uretprobe, ureplace, usdt, system call tracepoint or CUDA kernel (kprobe/KERNEL) sections to attach"));
    }

    let mut cmd = crate::agent_command(&req.agent, &req.command);
    cmd.env("BPFTIME_SHM", &name).env("BPFTIME_ENGINE", req.engine.name());
    if req.checks == bpftime_vm::Checks::All {
        cmd.env("BPFTIME_CHECKS", "all");
    }
    if let Some(b) = req.budget {
        cmd.env("BPFTIME_BUDGET", b.to_string());
    }
    supervise::prepare_command(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", req.command[0]))?;
    supervise::set_child(child.id());

    let events = Events {
        maps: loaded.maps.iter().filter(|m| matches!(m.map_type(), MapType::Ringbuf | MapType::PerfEventArray)).cloned().collect(),
        btf: obj.btf.clone(),
        json: req.json,
        record_types: Default::default(),
    };
    let mut trace_pos = 0;
    let mut follow_trace = |sink: &mut Sink| {
        if let Some(pipe) = TracePipe::existing(&region) {
            let (lines, next) = pipe.read_from(trace_pos);
            trace_pos = next;
            for l in lines {
                sink.line(&l);
            }
        }
    };
    let status = loop {
        events.drain(&mut sink);
        follow_trace(&mut sink);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{}`: {e}", req.command[0])),
        }
    };
    events.drain(&mut sink);
    follow_trace(&mut sink);
    let code = status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));

    let command = req.command.join(" ");
    let not_attached: Vec<(links::UprobeLink, String)> =
        links::list(&region).into_iter().filter_map(|l| never_attached_reason(&l, &command).map(|r| (l, r))).collect();
    let maps: Vec<Map> = loaded.maps.iter().filter(|m| !m.name().starts_with(".rodata")).cloned().collect();
    let lost: Vec<(String, u64)> = events.maps.iter().filter(|m| m.lost() > 0).map(|m| (m.name().to_string(), m.lost())).collect();
    if req.json {
        let summary = json!({
            "exit_code": code,
            "maps": maps.iter().map(dump::json).collect::<Vec<_>>(),
            "not_attached": not_attached.iter().map(|(l, why)| json!({"program": l.name, "target": l.target, "reason": why})).collect::<Vec<_>>(),
            "lost": lost.iter().map(|(m, n)| json!({"map": m, "lost": n})).collect::<Vec<_>>(),
        });
        sink.line(&summary.to_string());
    } else {
        sink.line(&format!("bpftime: `{command}` exited with {code}"));
        for (l, why) in &not_attached {
            sink.line(&format!("bpftime: `{}` was never attached to {}: {why}", l.name, l.target));
        }
        for (m, n) in &lost {
            sink.line(&format!("bpftime: {n} records of `{m}` were lost (the buffer was full)"));
        }
        for m in &maps {
            for l in dump::human(m).lines() {
                sink.line(l);
            }
        }
    }
    drop(guard);
    Ok(code)
}
