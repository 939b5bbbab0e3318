//! What the agent does: find programs, attach them, run them on probe hits.

use bpftime_attach::{attach, resolve, AttachError, ProbeHandler, ProbeKind, PtRegs, SiteInfo, Target};
use bpftime_object::{Object, ProgramKind};
use bpftime_runtime::{links, EngineKind, LoadedProgram, ProbeProgram, Runtime};
use bpftime_shm::{default_name, ShmRegion};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A program to attach once its binary is mapped.
#[derive(Clone)]
struct Pending {
    prog: Arc<LoadedProgram>,
    target: String,
    retprobe: bool,
    cookie: u64,
}

/// The agent's state in this process.
pub struct Agent {
    runtime: &'static Runtime,
    pending: Mutex<Vec<Pending>>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

fn verbose() -> bool {
    std::env::var_os("BPFTIME_VERBOSE").is_some()
}

/// Runs a program when its probe fires.
pub struct ProgramProbe {
    runtime: &'static Runtime,
    probe: ProbeProgram,
    reported: AtomicBool,
}

impl ProgramProbe {
    /// A handler running `prog` with the given attach cookie and function address.
    pub fn new(runtime: &'static Runtime, prog: Arc<LoadedProgram>, cookie: u64, func_ip: u64) -> Self {
        ProgramProbe { runtime, probe: ProbeProgram { program: prog, cookie, func_ip }, reported: AtomicBool::new(false) }
    }
}

impl ProbeHandler for ProgramProbe {
    fn on_hit(&self, regs: &PtRegs) {
        let r = self.runtime.run_probe(&self.probe, regs.as_bytes());
        if let Err(e) = r {
            self.report(e);
        }
    }
}

impl ProgramProbe {
    /// Reports the first failure of each probe; the application never stops for it.
    #[cold]
    #[inline(never)]
    fn report(&self, e: bpftime_vm::exec::RunError) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            eprintln!("bpftime: program `{}` failed: {e}", self.probe.program.name);
        }
    }
}

fn attach_one(runtime: &'static Runtime, p: &Pending) -> Result<(), String> {
    let target = Target::parse(&p.target).map_err(|e| e.to_string())?;
    let r = resolve(&target).map_err(|e| e.to_string())?;
    let handler = Arc::new(ProgramProbe::new(runtime, p.prog.clone(), p.cookie, r.addr));
    let kind = if p.retprobe { ProbeKind::Return } else { ProbeKind::Entry };
    attach(r.addr, SiteInfo { function_size: r.function_size, at_entry: r.at_entry }, kind, handler).map_err(|e: AttachError| e.to_string())?;
    if verbose() {
        eprintln!("bpftime: attached {} `{}` to {} ({:#x})", if p.retprobe { "uretprobe" } else { "uprobe" }, p.prog.name, p.target, r.addr);
    }
    Ok(())
}

impl Agent {
    /// Attaches what can be; keeps targets whose binary is not mapped yet.
    fn attach_all(&self, items: Vec<Pending>) {
        let mut still = vec![];
        for p in items {
            match attach_one(self.runtime, &p) {
                Ok(()) => {}
                Err(e) if e.contains("is not mapped in this process") => still.push(p),
                Err(e) => eprintln!("bpftime: cannot attach `{}` to {}: {e}", p.prog.name, p.target),
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(still);
    }

    /// The runtime the agent uses.
    pub fn runtime(&self) -> &'static Runtime {
        self.runtime
    }
}

/// Attaches pending probes whose binaries are now mapped (after a dlopen).
pub fn attach_pending() {
    let Some(agent) = AGENT.get() else { return };
    let items = std::mem::take(&mut *agent.pending.lock().unwrap_or_else(|e| e.into_inner()));
    if !items.is_empty() {
        agent.attach_all(items);
    }
}

fn uprobe_target(section: &str, kind: &ProgramKind) -> Option<(String, bool)> {
    match kind {
        ProgramKind::Uprobe { retprobe, target } if !target.is_empty() => Some((target.clone(), *retprobe)),
        ProgramKind::Uprobe { .. } => {
            eprintln!("bpftime: section `{section}` names no BINARY:FUNCTION to attach to");
            None
        }
        _ => None,
    }
}

fn engine() -> EngineKind {
    match std::env::var("BPFTIME_ENGINE").as_deref() {
        Ok("interp") => EngineKind::Interp,
        _ => EngineKind::Jit,
    }
}

/// Loads the standalone object, or reads the region's links, and attaches.
pub(crate) fn start() {
    let name = default_name();
    let program = std::env::var_os("BPFTIME_PROGRAM");
    let region = match ShmRegion::open(&name) {
        Ok(r) => Arc::new(r),
        Err(e) if program.is_some() => match ShmRegion::anonymous(64 << 20) {
            Ok(r) => {
                if verbose() {
                    eprintln!("bpftime: {e}; keeping the maps in private memory");
                }
                Arc::new(r)
            }
            Err(e) => return eprintln!("bpftime: {e}"),
        },
        Err(e) => {
            if verbose() {
                eprintln!("bpftime: {e}; nothing to attach");
            }
            return;
        }
    };
    let runtime: &'static Runtime = Box::leak(Box::new(Runtime::new(region, engine())));
    let mut items = vec![];
    if let Some(path) = program {
        let loaded = std::fs::read(&path)
            .map_err(|e| format!("{}: {e}", path.to_string_lossy()))
            .and_then(|b| Object::parse(&b).map_err(|e| format!("{}: {e}", path.to_string_lossy())))
            .and_then(|obj| runtime.load_object(&obj).map_err(|e| format!("{}: {e}", path.to_string_lossy())));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => return eprintln!("bpftime: {e}"),
        };
        for (name, section, id) in loaded.programs {
            let Some((target, retprobe)) = uprobe_target(&section, &ProgramKind::from_section(&section)) else { continue };
            if let Err(e) = links::store(runtime.region(), &name, id, &target, retprobe, 0) {
                eprintln!("bpftime: {e}");
            }
            match runtime.program(id) {
                Ok(prog) => items.push(Pending { prog, target, retprobe, cookie: 0 }),
                Err(e) => eprintln!("bpftime: {e}"),
            }
        }
    } else {
        for l in links::list(runtime.region()) {
            match runtime.program(l.prog) {
                Ok(prog) => items.push(Pending { prog, target: l.target, retprobe: l.retprobe, cookie: l.cookie }),
                Err(e) => eprintln!("bpftime: link {}: {e}", l.id),
            }
        }
    }
    let agent = AGENT.get_or_init(|| Agent { runtime, pending: Mutex::new(vec![]) });
    agent.attach_all(items);
}
